"""Blame ages: for each line of a file version, the time of the change that last touched it.

Temporal attention biases a query's attention to a key by the distance between their times, so
a sample whose tokens all share one time gives it nothing to learn: the bias is the same for
every key and cancels in the softmax. Giving each line of a file the time (history position) of
the change that last touched it lets attention tell fresh code from old in every sample kind.

Times follow each file's chain of records in commit order (`zen_coder.data.samples.file_chains`:
renames followed, a deletion ends a chain). A line kept from the previous version keeps its
time; a line the record adds or changes gets the record's history position. The mapping goes
through the record's own diff (complete: `zen-coder mine` stores the whole unified diff of the
two versions it stores); where the diff does not fit the contents, and between two records of a
chain whose versions differ (a commit between them was filtered out by mining), it goes through
libgit2's xdiff of the two versions (the algorithm the diffs were made with). A line whose last
change is not among the mined records (the content of a file's first record, the lines an
unmined commit changed) gets the record's position - 1, clipped at 0: changed at some time
before this record, the start time file-history samples already use.

Per-line times are tuples of ints, one per line; lines are cut at "\\n" only, as git counts
them (a last line without a newline is a line; an empty text has none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import pygit2

Times = tuple[int, ...]
# A changed region: (first old line, old line count, first new line, new line count), 0-based.
Change = tuple[int, int, int, int]

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def line_count(text: str | None) -> int:
    """Lines of `text` as git counts them: cut at "\\n", a last unterminated line counts."""
    if not text:
        return 0
    return text.count("\n") + (not text.endswith("\n"))


def piece_times(text: str, times: Times, start: int, end: int) -> Times:
    """The times of the lines `text[start:end]` touches (its first line may be a part of one)."""
    first = text.count("\n", 0, start)
    return times[first : first + line_count(text[start:end])]


@dataclass(frozen=True)
class LineTimes:
    """The times of the lines of a record's two versions (empty for an absent one)."""

    before: Times
    after: Times


def unknown_time(position: int) -> int:
    """The time of a line whose last change was not mined: just before the record."""
    return max(0, position - 1)


def _hunk_start(start: int, lines: int) -> int:
    """A hunk side's first line, 0-based (an empty side names the line before it, 1-based)."""
    return start - 1 if lines else start


def diff_changes(diff: str) -> list[Change] | None:
    """The changed regions of a unified diff, or None where it cannot be read as one."""
    body = diff.find("@@")
    if body < 0:
        return None
    changes: list[Change] = []
    old = new = 0  # the next line of each side
    run: list[int] | None = None
    for line in diff[body:].split("\n"):
        sign = line[:1]
        if sign == "-" or sign == "+":
            if run is None:
                run = [old, 0, new, 0]
            if sign == "-":
                run[1] += 1
                old += 1
            else:
                run[3] += 1
                new += 1
            continue
        if run is not None:
            changes.append((run[0], run[1], run[2], run[3]))
            run = None
        if sign == " ":
            old += 1
            new += 1
        elif sign == "@":
            match = _HUNK.match(line)
            if match is None:
                return None
            old_first = _hunk_start(int(match[1]), 1 if match[2] is None else int(match[2]))
            new_first = _hunk_start(int(match[3]), 1 if match[4] is None else int(match[4]))
            if old_first - old != new_first - new or old_first < old:
                return None
            old, new = old_first, new_first
        elif sign not in ("\\", ""):
            return None
    if run is not None:
        changes.append((run[0], run[1], run[2], run[3]))
    return changes


def xdiff_changes(old: str, new: str) -> list[Change] | None:
    """The changed regions between two versions by libgit2's xdiff; None for binary contents."""
    patch = pygit2.Patch.create_from(old, new, context_lines=0)
    if patch.delta.is_binary:
        return None
    changes = []
    for hunk in patch.hunks:
        old_first = _hunk_start(hunk.old_start, hunk.old_lines)
        new_first = _hunk_start(hunk.new_start, hunk.new_lines)
        changes.append((old_first, hunk.old_lines, new_first, hunk.new_lines))
    return changes


def carry(times: Times, changes: list[Change], lines: int, fill: int) -> Times | None:
    """The new version's times: unchanged lines keep theirs, changed ones get `fill`; None where
    the changes do not fit `times` and `lines` (the diff was not of these versions)."""
    out: list[int] = []
    old = 0
    for old_first, old_lines, new_first, new_lines in changes:
        if old_first < old or new_first - len(out) != old_first - old:
            return None
        out += times[old:old_first]
        out += (fill,) * new_lines
        old = old_first + old_lines
    if old > len(times) or len(out) + len(times) - old != lines:
        return None
    out += times[old:]
    return tuple(out)


def successor(old: str, times: Times, new: str, fill: int, diff: str = "") -> Times:
    """The times of `new`'s lines, given those of `old`'s: through `diff` if it is the diff of
    the two, else through xdiff; lines that are new (or all, for binary contents) get `fill`."""
    if old == new:
        return times
    lines = line_count(new)
    changes = diff_changes(diff) if diff else None
    carried = None if changes is None else carry(times, changes, lines, fill)
    if carried is None:
        changes = xdiff_changes(old, new)
        carried = None if changes is None else carry(times, changes, lines, fill)
    return carried if carried is not None else (fill,) * lines


def record_times(
    row: dict, old: str | None, new: str | None, before: Times | None = None
) -> LineTimes:
    """A record's line times; `before` are its old version's, unknown (position - 1) if None."""
    position = row["history_position"]
    if before is None:
        before = (unknown_time(position),) * line_count(old)
    after = successor(old or "", before, new, position, row.get("diff", "")) if new else ()
    return LineTimes(before, after)


class FileBlame:
    """Line times along each file's chain of records, fed the records in commit order.

    It keeps the newest version of every file it has seen (its text and times), so its memory
    is about one snapshot of the repository's mined files.
    """

    def __init__(self, chains: list[list[int]]) -> None:
        self.previous: dict[int, int] = {b: a for chain in chains for a, b in pairwise(chain)}
        self.versions: dict[int, tuple[str, Times]] = {}

    def times(self, index: int, row: dict, old: str | None, new: str | None) -> LineTimes:
        """The line times of record `index` (its row and versions), remembered for the next."""
        known = self.versions.pop(self.previous.get(index, -1), None)
        before = None
        if old and known is not None:
            text, times = known
            before = successor(text, times, old, unknown_time(row["history_position"]))
        result = record_times(row, old, new, before)
        if new is not None:
            self.versions[index] = (new, result.after)
        return result
