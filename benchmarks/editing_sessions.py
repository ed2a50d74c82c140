"""Editing sessions for the serving benchmark: what an editor sends while a developer types.

A session replays one change of a mined commit in an editor. The change's new lines (a run of
consecutive `+` lines of the record's diff) are typed character by character into the file as it
stands after the commit, with those lines still missing; the editor sends a completion request
only when typing pauses for longer than its debounce, as Continue (350 ms) and Tabby (250 ms) do.
Typing is modelled with a fixed interval between keys and longer pauses after a word and after
Enter, so requests fall at word and line ends, and each one's prompt is the last one's plus what
was typed since: the traffic a keystroke engine's prefix cache is built for.

What the editor sends around the cursor is a window fixed for the whole session (the lines above
the change up to a token budget, and a few lines below it), as an editor sends its viewport:
consecutive prompts then differ only where the typing happened, and every prompt fits the model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from zen_coder.data.records import open_mined, read_shard

# Prose and configuration: nobody wants code completion there, and editors mostly do not ask.
NOT_CODE = frozenset({"Markdown", "YAML", "TOML", "JSON"})
HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
RECORD_COLUMNS = ["repo", "commit", "path", "language", "change_type", "diff", "new_content"]


@dataclass(frozen=True)
class Typing:
    """How the developer types (seconds). 0.1 s a key is ~100 words a minute inside a word; the
    pauses after a word and after Enter are what the editor's debounce waits for."""

    key_interval: float = 0.1
    word_pause: float = 0.4
    line_pause: float = 1.0
    debounce: float = 0.3


@dataclass(frozen=True)
class Window:
    """What the editor sends: up to `prefix_tokens` of whole lines above the change, up to
    `suffix_tokens` of whole lines below it, and at most `typed_chars` of the change typed (whole
    lines, so a session ends where a line does)."""

    prefix_tokens: int = 256
    suffix_tokens: int = 48
    typed_chars: int = 160
    min_typed_chars: int = 12


@dataclass(frozen=True)
class Edit:
    """One run of added lines, in the window the editor sends. `before` ends at the cursor on the
    first new line (its indentation already there, as the editor's auto-indent put it), `typed`
    is what the developer types, `after` starts with the line break that ends the last new line.
    """

    repo: str
    commit: str
    path: str
    language: str
    before: str
    typed: str
    after: str


@dataclass(frozen=True)
class Request:
    """One completion request: sent `at` seconds after the session's first key."""

    session: int
    index: int
    at: float
    path: str
    language: str
    prefix: str
    suffix: str

    @property
    def client(self) -> str:
        """Who sends it: one editor per session (a server cancels a client's older request)."""
        return f"session-{self.session}"


@dataclass(frozen=True)
class Session:
    number: int
    edit: Edit
    requests: tuple[Request, ...]


def added_runs(diff: str) -> list[tuple[int, int]]:
    """Runs of consecutive added lines of a unified diff, as (first line, line count) in the new
    file, lines counted from 0. A deleted line ends a run: what replaces it starts a new one."""
    runs: list[tuple[int, int]] = []
    line, start, length = 0, 0, 0
    for text in diff.splitlines():
        header = HUNK.match(text)
        if header:
            line = int(header.group(1)) - 1
        elif text.startswith("+") and not text.startswith("+++"):
            if not length:
                start = line
            length += 1
            line += 1
            continue
        elif text.startswith(" "):
            line += 1
        if length:
            runs.append((start, length))
            length = 0
    if length:
        runs.append((start, length))
    return runs


def edit_from_lines(
    lines: list[str], run: tuple[int, int], window: Window, count: Callable[[str], int]
) -> tuple[str, str, str] | None:
    """(before, typed, after) for typing the lines `run` of the file `lines` (each ending in a
    line break), or None when nothing worth typing fits the window."""
    start, length = run
    run_lines = lines[start : start + length]
    blank_above = next((i for i, text in enumerate(run_lines) if text.strip()), len(run_lines))
    start += blank_above  # the cursor starts on the first line with something to type
    typed_lines: list[str] = []
    for text in run_lines[blank_above:]:
        if sum(map(len, typed_lines)) + len(text) > window.typed_chars:
            break
        typed_lines.append(text)
    while typed_lines and not typed_lines[-1].strip():
        typed_lines.pop()
    typed = "".join(typed_lines).removesuffix("\n")
    indent = typed[: len(typed) - len(typed.lstrip(" \t"))]
    typed = typed[len(indent) :]
    if len(typed.strip()) < window.min_typed_chars:
        return None
    above = _lines_within(reversed(lines[:start]), window.prefix_tokens, count)
    below = _lines_within(lines[start + len(typed_lines) :], window.suffix_tokens, count)
    return "".join(reversed(above)) + indent, typed, "\n" + "".join(below)


def _lines_within(lines: Iterable[str], budget: int, count: Callable[[str], int]) -> list[str]:
    """The first of `lines` that together count at most `budget` tokens (line by line, so the
    order they come in does not matter)."""
    taken: list[str] = []
    total = 0
    for text in lines:
        total += count(text)
        if total > budget:
            break
        taken.append(text)
    return taken


def keystrokes(typed: str, typing: Typing) -> Iterator[tuple[float, int, float]]:
    """(time, characters typed so far, pause after it) for each key of `typed`. Enter brings the
    next line's indentation with it (auto-indent), so that takes no keys."""
    time, position = 0.0, 0
    while position < len(typed):
        key = typed[position]
        position += 1
        if key == "\n":
            while position < len(typed) and typed[position] in " \t":
                position += 1
            pause = typing.line_pause
        elif not _is_word(key) and position > 1 and _is_word(typed[position - 2]):
            pause = typing.word_pause
        else:
            pause = typing.key_interval
        if position == len(typed):
            pause = float("inf")  # the end: the developer stops and reads the suggestion
        yield time, position, pause
        time += pause


def _is_word(character: str) -> bool:
    return character.isalnum() or character == "_"


def debounced_requests(number: int, edit: Edit, typing: Typing) -> tuple[Request, ...]:
    """The requests the editor sends while `edit` is typed: one after every pause longer than the
    debounce, `debounce` seconds after the last key, with the text typed so far."""
    return tuple(
        Request(
            session=number,
            index=index,
            at=time + typing.debounce,
            path=edit.path,
            language=edit.language,
            prefix=edit.before + edit.typed[:position],
            suffix=edit.after,
        )
        for index, (time, position, _) in enumerate(
            key for key in keystrokes(edit.typed, typing) if key[2] > typing.debounce
        )
    )


def edits_from_records(
    records: Iterable[dict], window: Window, count: Callable[[str], int]
) -> Iterator[Edit]:
    """The first typeable run of added lines of each modified code file among `records` (rows of
    the mined dataset with RECORD_COLUMNS)."""
    for record in records:
        if record["change_type"] != "modify" or record["language"] in NOT_CODE:
            continue
        lines = record["new_content"].splitlines(keepends=True)
        for run in added_runs(record["diff"]):
            parts = edit_from_lines(lines, run, window, count)
            if parts is not None:
                yield Edit(
                    record["repo"], record["commit"], record["path"], record["language"], *parts
                )
                break


def mined_records(root: Path) -> dict[str, list[dict]]:
    """Each repository's records of the mined dataset `root` (read with `open_mined`, so a folder
    that is not one fails in one line)."""
    dataset = open_mined(root)
    return {
        repo: [row for shard in shards for row in read_shard(shard, RECORD_COLUMNS).to_pylist()]
        for repo, shards in sorted(dataset.shards.items())
    }


def build_sessions(
    records: dict[str, list[dict]],
    count: Callable[[str], int],
    *,
    limit: int,
    typing: Typing = Typing(),
    window: Window = Window(),
    requests: int | None = None,
    seed: int = 0,
) -> list[Session]:
    """Up to `limit` sessions taking turns among the repositories (so one large repository does
    not make the whole workload), each repository's edits in an order fixed by `seed`. With
    `requests`, every session is exactly that many requests: an edit that gives fewer is passed
    over, a longer one stops there (the developer moves on); editors replaying such sessions side
    by side stay busy together until the end, so a run's concurrency is what it says."""
    rng = random.Random(seed)
    queues = []
    for repo in sorted(records):
        rows = list(records[repo])
        rng.shuffle(rows)
        queues.append(edits_from_records(rows, window, count))
    sessions: list[Session] = []
    while queues and len(sessions) < limit:
        for queue in list(queues):
            edit = next(queue, None)
            if edit is None:
                queues.remove(queue)
                continue
            sent = debounced_requests(len(sessions), edit, typing)
            if requests is not None and len(sent) < requests:
                continue
            sessions.append(Session(len(sessions), edit, sent[:requests]))
            if len(sessions) == limit:
                break
    return sessions
