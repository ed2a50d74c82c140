"""Training samples from commit records: the formats the model learns git history from.

Every sample is a sequence of parts, each either a special token or text, and each with the
temporal position (the file's history position) its tokens carry: one for the whole part, or for
a file's content one per line, the time of the change that last touched the line
(zen_coder.data.blame), so that attention can tell fresh code from old. The formats:

    commit edit   <|repo|>r<|path|>p<|lang|>l<|before|>old<|message|>msg<|diff|>diff [<|after|>new]
    file history  <|history|><|repo|>r<|path|>p<|lang|>l[<|before|>old]
                      <|change|><|message|>msg<|diff|>diff  <|change|>...   (commit order)
    file          <|repo|>r<|path|>p<|lang|>l<|after|>content
    fill-in-the-middle, prefix-suffix-middle and suffix-prefix-middle:
                  <|repo|>r<|path|>p<|lang|>l<|fim_prefix|>pre<|fim_suffix|>suf<|fim_middle|>mid
                  <|repo|>r<|path|>p<|lang|>l<|fim_suffix|>suf<|fim_prefix|>pre<|fim_middle|>mid
    instruction   <|instruction|>msg<|before|>old<|response|>diff

Each ends with <|endoftext|> when packed, and starts with the tokenizer's BOS where it has one.
The special tokens named here are roles: with a base model's tokenizer each is the base's own
token for it where it has one (zen_coder.data.tokenizer.BASE_FAMILY_TOKENS), so a Qwen2.5-Coder
base sees <|repo_name|>r<|file_sep|>p... and its own fill-in-the-middle markers. Special tokens
are inserted by id, never parsed from text, so a file that contains "<|endoftext|>" cannot forge
one.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from zen_coder.data.blame import LineTimes, Times, piece_times, record_times, unknown_time
from zen_coder.data.config import PrepareConfig

SPECIAL = True
TEXT = False

# A commit subject that says nothing an instruction could be built on.
_GENERIC_SUBJECT = re.compile(
    r"^(?:(?:fix|fixes|fixed|update|updates|updated|change|changes|changed|edit|edits|modify|"
    r"tweak|tweaks|cleanup|clean up|refactor|refactoring|wip|misc|minor|more|stuff|test|tests|"
    r"typo|typos|commit|save|temp|tmp|initial|initial commit|first commit)"
    r"(?:\s+(?:it|this|that|bug|bugs|stuff|things|file|files|code|readme|docs?|changes|fixes))?)$"
)
_COMMON_ENGLISH = frozenset(
    {
        "a",
        "an",
        "the",
        "to",
        "of",
        "in",
        "for",
        "on",
        "with",
        "and",
        "or",
        "is",
        "are",
        "be",
        "add",
        "fix",
        "use",
        "remove",
        "update",
        "make",
        "allow",
        "support",
        "when",
        "from",
        "by",
        "not",
        "new",
        "test",
        "tests",
        "change",
        "move",
        "rename",
        "handle",
        "improve",
        "check",
    }
)


@dataclass
class Sample:
    format: str  # commit_edit, file_history, file, fim, instruction
    split: str  # train or validation
    repo: str
    language: str | None
    # (is special token, token name or text, time): one time, or a text's per-line times
    parts: list[tuple[bool, str, int | Times]]
    commits: list[str] = field(default_factory=list)
    path: str = ""

    def text(self) -> str:
        """The sample's text parts, joined: what decontamination looks at."""
        return "\n".join(value for special, value, _ in self.parts if not special)


def validation_commits(commits: list[tuple[int, str]], fraction: float) -> set[str]:
    """The newest `fraction` of a repository's commits, by commit time (then SHA, for ties).

    At least one commit is held out once a repository has two, so every repository with a
    history contributes to validation.
    """
    unique = sorted(set(commits))
    if len(unique) < 2 or fraction <= 0:
        return set()
    count = min(len(unique) - 1, max(1, math.ceil(fraction * len(unique))))
    return {sha for _, sha in unique[-count:]}


def good_instruction(message: str, config: PrepareConfig) -> bool:
    """Whether a commit message can serve as an instruction (OctoPack's quality filters)."""
    subject = message.split("\n", 1)[0].strip()
    words = subject.split()
    if len(words) < config.min_instruction_words or len(subject) < 10:
        return False
    normalized = re.sub(r"[^\w\s]", "", subject.lower()).strip()
    if _GENERIC_SUBJECT.match(normalized):
        return False
    if config.english_instructions_only:
        letters = [c for c in subject if c.isalpha()]
        if sum(c.isascii() for c in letters) < 0.9 * len(letters):
            return False
        if not any(word.lower().strip(".,:;!?") in _COMMON_ENGLISH for word in words):
            return False
    return True


def _header(repo: str, path: str, language: str | None, time: int) -> list:
    return [
        (SPECIAL, "<|repo|>", time),
        (TEXT, repo, time),
        (SPECIAL, "<|path|>", time),
        (TEXT, path, time),
        (SPECIAL, "<|lang|>", time),
        (TEXT, language or "", time),
    ]


def given_or_own(lines: LineTimes | None, row: dict, old: str | None, new: str | None) -> LineTimes:
    """`lines` where given (the file's ages along its chain), else the times the record alone
    tells (`record_times`: its changed lines at its position, the rest just before)."""
    return lines if lines is not None else record_times(row, old, new)


@dataclass
class RecordSamples:
    """The per-record formats: commit edit, file (plain or fill-in-the-middle), instruction."""

    config: PrepareConfig

    def all(
        self,
        row: dict,
        old: str | None,
        new: str | None,
        split: str,
        lines: LineTimes | None = None,
    ) -> Iterator[Sample]:
        """The record's samples; `lines` are its versions' line times (zen_coder.data.blame),
        by default those this record alone tells (`record_times`)."""
        lines = given_or_own(lines, row, old, new)
        config = self.config
        if config.commit_edits and row["diff"]:
            yield self.commit_edit(row, old, new, split, lines)
        if config.file_contents and new:
            yield self.file(row, new, split, lines)
        if config.instructions and row["diff"] and good_instruction(row["message"], config):
            yield self.instruction(row, old, split, lines)

    def _sample(self, kind: str, row: dict, split: str, parts: list) -> Sample:
        return Sample(
            kind, split, row["repo"], row["language"], parts, [row["commit"]], row["path"]
        )

    def commit_edit(
        self,
        row: dict,
        old: str | None,
        new: str | None,
        split: str,
        lines: LineTimes | None = None,
    ) -> Sample:
        """The edit; without `lines`, the line times this record alone tells (`record_times`)."""
        lines = given_or_own(lines, row, old, new)
        time = row["history_position"]
        parts = _header(row["repo"], row["path"], row["language"], time)
        parts += [
            (SPECIAL, "<|before|>", time),
            (TEXT, old or "", lines.before),
            (SPECIAL, "<|message|>", time),
            (TEXT, row["message"], time),
        ]
        if self.config.edit_target in ("diff", "both"):
            parts += [(SPECIAL, "<|diff|>", time), (TEXT, row["diff"], time)]
        if self.config.edit_target in ("after", "both"):
            parts += [(SPECIAL, "<|after|>", time), (TEXT, new or "", lines.after)]
        return self._sample("commit_edit", row, split, parts)

    def file(self, row: dict, content: str, split: str, lines: LineTimes | None = None) -> Sample:
        """The file after the commit, plain or rearranged for fill-in-the-middle.

        The split points are uniform over characters (as in StarCoder) and drawn from a random
        generator seeded by the record, so the same data always gives the same samples. Each
        piece keeps the times of the lines it holds; without `lines`, the times this record
        alone tells (`record_times`, the content as the record's new version).
        """
        after = given_or_own(lines, row, None, content).after
        time = row["history_position"]
        parts = _header(row["repo"], row["path"], row["language"], time)
        rng = random.Random(f"{self.config.seed}:{row['commit']}:{row['path']}")
        if rng.random() >= self.config.fim_rate:
            parts += [(SPECIAL, "<|after|>", time), (TEXT, content, after)]
            return self._sample("file", row, split, parts)
        start, end = sorted(rng.randint(0, len(content)) for _ in range(2))

        def piece(role: str, first: int, last: int) -> list:
            text = content[first:last]
            return [(SPECIAL, role, time), (TEXT, text, piece_times(content, after, first, last))]

        prefix = piece("<|fim_prefix|>", 0, start)
        suffix = piece("<|fim_suffix|>", end, len(content))
        middle = piece("<|fim_middle|>", start, end)
        spm = rng.random() < self.config.fim_spm_rate
        parts += (suffix + prefix if spm else prefix + suffix) + middle
        return self._sample("fim", row, split, parts)

    def instruction(
        self, row: dict, old: str | None, split: str, lines: LineTimes | None = None
    ) -> Sample:
        before = given_or_own(lines, row, old, None).before
        time = row["history_position"]
        parts = [
            (SPECIAL, "<|instruction|>", time),
            (TEXT, row["message"], time),
            (SPECIAL, "<|before|>", time),
            (TEXT, old or "", before),
            (SPECIAL, "<|response|>", time),
            (TEXT, row["diff"], time),
        ]
        return self._sample("instruction", row, split, parts)


def file_chains(rows: list[dict]) -> list[list[int]]:
    """Row indices of each file's successive changes, following renames; a deletion ends one."""
    chains: list[list[int]] = []
    current: dict[str, int] = {}
    for index, row in enumerate(rows):
        kind = row["change_type"]
        source = row["old_path"] if kind == "rename" else row["path"]
        chain = current.pop(source, None) if kind != "add" else None
        if chain is None:
            chain = len(chains)
            chains.append([])
        chains[chain].append(index)
        if kind != "delete":
            current[row["path"]] = chain
    return chains


@dataclass
class HistoryChunk:
    rows: list[int]
    split: str

    @property
    def first(self) -> int:
        return self.rows[0]


def history_chunks(
    rows: list[dict], splits: list[str], budget_chars: int
) -> Iterator[HistoryChunk]:
    """Each file's changes, per split, cut at change boundaries into chunks of about a context.

    Train and validation changes never share a chunk, so no training sample holds content of a
    validation commit.
    """
    for chain in file_chains(rows):
        for split in ("train", "validation"):
            chunk: list[int] = []
            size = 0
            for index in chain:
                if splits[index] != split:
                    continue
                cost = len(rows[index]["diff"]) + len(rows[index]["message"])
                if chunk and size + cost > budget_chars:
                    yield HistoryChunk(chunk, split)
                    chunk, size = [], 0
                chunk.append(index)
                size += cost
            if chunk:
                yield HistoryChunk(chunk, split)


def history_sample(
    chunk: HistoryChunk,
    rows: list[dict],
    before: str | None,
    before_times: Times | None = None,
) -> Sample:
    """One chunk of a file's history; `before` is the file before its first change, if given,
    with its line times (unknown, the chunk's start time, where not given)."""
    first, last = rows[chunk.first], rows[chunk.rows[-1]]
    start_time = unknown_time(first["history_position"])
    parts = [(SPECIAL, "<|history|>", start_time)]
    parts += _header(last["repo"], last["path"], last["language"], start_time)
    if before:
        lines = (
            before_times if before_times is not None else record_times(first, before, None).before
        )
        parts += [(SPECIAL, "<|before|>", start_time), (TEXT, before, lines)]
    for index in chunk.rows:
        row = rows[index]
        time = row["history_position"]
        parts += [
            (SPECIAL, "<|change|>", time),
            (SPECIAL, "<|message|>", time),
            (TEXT, row["message"], time),
            (SPECIAL, "<|diff|>", time),
            (TEXT, row["diff"], time),
        ]
    commits = [rows[index]["commit"] for index in chunk.rows]
    return Sample(
        "file_history", chunk.split, last["repo"], last["language"], parts, commits, last["path"]
    )
