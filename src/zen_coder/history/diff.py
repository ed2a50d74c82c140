"""Unified diffs of file versions, with the hunks and line counts git computes.

Modifications go through libgit2's xdiff (pygit2) on the whole files, the same algorithm and
heuristics as `git diff`, so `lines_added`/`lines_deleted` equal `git log --numstat`. (Diffing only
the differing middle of two files would be twice as fast, but xdiff classifies lines by how often
they occur in the whole file, and on about 1% of real changes the trimmed diff counts differently.)
An added or deleted file needs no diff algorithm: its one hunk is written directly.
"""

from __future__ import annotations

import pygit2

CONTEXT = 3


def _range(start: int, count: int) -> str:
    return str(start) if count == 1 else f"{start},{count}"


def _whole_file(text: str, sign: str) -> tuple[str, int]:
    """The hunk of an added (`+`) or deleted (`-`) file, and its number of lines."""
    lines = text.count("\n")
    body = sign + text[:-1].replace("\n", "\n" + sign) + "\n"
    if sign == "+":
        return f"@@ -0,0 +{_range(1, lines)} @@\n{body}", lines
    return f"@@ -{_range(1, lines)} +0,0 @@\n{body}", lines


def unified_diff(
    old: str | None, new: str | None, old_path: str, new_path: str
) -> tuple[str, int, int]:
    """(diff, lines added, lines deleted) from `old` to `new`; None means the file is absent.

    The diff starts at its `---`/`+++` header: no `diff --git` or `index` line, which would name
    blobs of the raw rather than the normalized contents. It is empty when the contents are equal
    (a pure rename).
    """
    if old == new:
        return "", 0, 0
    header = f"--- {'/dev/null' if old is None else 'a/' + old_path}\n"
    header += f"+++ {'/dev/null' if new is None else 'b/' + new_path}\n"
    if not old and not new:  # an empty file added or deleted
        return header, 0, 0
    if not old and new.endswith("\n"):
        body, lines = _whole_file(new, "+")
        return header + body, lines, 0
    if not new and old.endswith("\n"):
        body, lines = _whole_file(old, "-")
        return header + body, 0, lines
    # libgit2 reads the buffers lazily: they must outlive `patch` (they do: they are arguments).
    patch = pygit2.Patch.create_from(old, new, context_lines=CONTEXT)
    text = patch.text
    _, added, deleted = patch.line_stats
    hunks = text.find("\n@@")  # none for binary contents (a NUL byte)
    return (header + text[hunks + 1 :] if hunks >= 0 else ""), added, deleted


def changed_lines(diff: str) -> str:
    """The added and removed lines of a diff, apart: what near-duplicate detection compares."""
    added, removed = [], []
    for line in diff[diff.find("\n@@") + 1 :].split("\n") if "\n@@" in diff else ():
        if line.startswith("+"):
            added.append(line[1:])
        elif line.startswith("-"):
            removed.append(line[1:])
    return "\n".join(added) + "\n__removed__\n" + "\n".join(removed)
