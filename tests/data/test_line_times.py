"""Per-line times (blame ages) in every sample kind, from a real mined history to packed tokens."""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from tests.gitrepo import GitRepo
from zen_coder.data.blame import FileBlame, LineTimes, line_count
from zen_coder.data.config import PrepareConfig
from zen_coder.data.loader import open_split
from zen_coder.data.pack import tokenize
from zen_coder.data.pipeline import _repository_samples, prepare, split_repositories
from zen_coder.data.records import open_mined
from zen_coder.data.samples import Sample, file_chains
from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer
from zen_coder.history.diff import unified_diff
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec

CONFIG = PrepareConfig(
    vocab_size=1024,
    context_length=1024,
    tokenizer_train_chars=2_000_000,
    decontaminate=False,
    fim_rate=1.0,
    edit_target="both",
)
NAMES = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL")


def constants(values: dict[str, int]) -> str:
    return "".join(f"{name} = {values.get(name, number)}\n" for number, name in enumerate(NAMES, 1))


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[list[Sample], RoleTokenizer, Path]:
    """A file added (its 1st change), line 3 changed (2nd), renamed with line 6 changed (3rd),
    line 1 changed (4th); then another file, so the newest commit is the validation one."""
    root = tmp_path_factory.mktemp("line-times")
    repo = GitRepo(root / "repo")
    repo.write("pkg/calc.py", constants({}))
    repo.commit("Add the calculator constants for the unit table")
    repo.write("pkg/calc.py", constants({"CHARLIE": 33}))
    repo.commit("Raise the charlie constant for larger inputs")
    repo.move("pkg/calc.py", "pkg/ops.py")
    repo.write("pkg/ops.py", constants({"CHARLIE": 33, "FOXTROT": 66}))
    repo.commit("Move the constants to ops and raise foxtrot")
    repo.write("pkg/ops.py", constants({"ALPHA": 11, "CHARLIE": 33, "FOXTROT": 66}))
    repo.commit("Scale the alpha constant by eleven for the new table")
    repo.write("pkg/other.py", "def other():\n    return 1\n")
    repo.commit("Add another module with a helper function")
    mined = root / "mined"
    mine([RepoSpec(str(repo.path))], mined, workers=1, salt=b"line-times")
    prepared = root / "prepared"
    prepare(mined, prepared, CONFIG, benchmarks=[])
    dataset = open_mined(mined)
    [split] = split_repositories(dataset, CONFIG.validation_fraction)
    samples = list(_repository_samples(dataset, split, CONFIG))
    return samples, read_tokenizer(prepared), prepared


def token_times(sample: Sample, tok: RoleTokenizer) -> tuple[list[str], np.ndarray]:
    """The sample's tokens as text (each decoded alone) and the time each carries."""
    [document] = tokenize([sample], tok, {}, {})
    names = {number: role for role, number in tok.ids.items()}
    texts = [
        names.get(token) or tok.tokenizer.decode([token], skip_special_tokens=False)
        for token in document.tokens.tolist()
    ]
    return texts, document.time


def text_times(texts: list[str], times: np.ndarray, first: str, last: str):
    """(token start in the text between the roles `first` and `last`, its time) for each token,
    the text rebuilt from the tokens decoded one by one (not from the tokenizer's offsets)."""
    start, end = texts.index(first) + 1, texts.index(last)
    position, out = 0, []
    for text, time in zip(texts[start:end], times[start:end], strict=True):
        out.append((position, int(time)))
        position += len(text)
    return "".join(texts[start:end]), out


def expected_at(text: str, line_times: list[int], position: int) -> int:
    return line_times[text.count("\n", 0, position)]


def the_sample(samples: list[Sample], kind: str, message_word: str) -> Sample:
    return next(
        s for s in samples if s.format == kind and any(message_word in v for _, v, _ in s.parts)
    )


def test_commit_edit_before_file_carries_blame_ages(history):
    """In the 4th change's edit, the before file's untouched lines carry 1 (the file's creation),
    the lines changed by the 2nd and 3rd changes 2 and 3, and header, message and diff 4.
    Checked to fail with the before file given the commit's time (every line 4), and with each
    token given the time of the line after the one it starts on (lines shifted by one)."""
    samples, tok, _ = history
    edit = the_sample(samples, "commit_edit", "alpha constant")
    texts, times = token_times(edit, tok)
    before, located = text_times(texts, times, "<|before|>", "<|message|>")
    assert before == constants({"CHARLIE": 33, "FOXTROT": 66})
    ages = [1, 1, 2, 1, 1, 3, 1, 1]
    assert [time for position, time in located] == [
        expected_at(before, ages, position) for position, _ in located
    ]
    assert {time for _, time in located} == {1, 2, 3}
    after, located = text_times(texts, times, "<|after|>", "<|endoftext|>")
    assert [time for _, time in located] == [
        expected_at(after, [4, 1, 2, 1, 1, 3, 1, 1], position) for position, _ in located
    ]
    header = texts.index("<|before|>")
    assert set(times[: header + 1].tolist()) == {4}
    _, message = text_times(texts, times, "<|message|>", "<|diff|>")
    _, diff = text_times(texts, times, "<|diff|>", "<|after|>")
    assert {time for _, time in message + diff} == {4}


def test_fill_in_the_middle_pieces_keep_their_lines_times(history):
    """Prefix, suffix and middle, rearranged, each carry the times of the lines they came from.
    Checked to fail with every piece's times counted from its own first line (the middle and
    suffix then take the times of the file's first lines)."""
    samples, tok, _ = history
    commits = the_sample(samples, "commit_edit", "alpha constant").commits
    fim = next(s for s in samples if s.format == "fim" and s.commits == commits)
    content = constants({"ALPHA": 11, "CHARLIE": 33, "FOXTROT": 66})
    ages = [4, 1, 2, 1, 1, 3, 1, 1]
    texts, times = token_times(fim, tok)
    roles = [t for t in texts if t.startswith("<|fim_")]
    order = {role: texts.index(role) for role in roles}
    end = dict(pairwise([*sorted(order, key=order.get), "<|endoftext|>"]))
    pieces = {role: text_times(texts, times, role, end[role]) for role in order}
    prefix, middle = pieces["<|fim_prefix|>"][0], pieces["<|fim_middle|>"][0]
    suffix = pieces["<|fim_suffix|>"][0]
    assert prefix + middle + suffix == content and middle.count("\n") >= 1
    starts = {"<|fim_prefix|>": 0, "<|fim_middle|>": len(prefix)}
    starts["<|fim_suffix|>"] = len(prefix) + len(middle)
    for role, (_, located) in pieces.items():
        expected = [expected_at(content, ages, starts[role] + p) for p, _ in located]
        assert [time for _, time in located] == expected, role


def test_line_times_do_not_change_the_tokens(history):
    """Every sample tokenizes to the same ids with per-line times as with one time per part.
    Checked to fail with per-line parts encoded line by line (tokens that span a line's end
    are cut, so the ids differed)."""
    samples, tok, _ = history
    flat = [
        dataclasses.replace(s, parts=[(special, value, 0) for special, value, _ in s.parts])
        for s in samples
    ]
    assert any(not isinstance(t, int) for s in samples for _, _, t in s.parts)
    with_lines = tokenize(samples, tok, {}, {})
    without = tokenize(flat, tok, {}, {})
    for a, b in zip(with_lines, without, strict=True):
        assert a.tokens.tolist() == b.tokens.tolist()
        assert len(a.time) == len(a.tokens)


def test_packed_documents_carry_the_line_times(history):
    """The packed time channel of `prepare`'s output holds the blame ages: within one document
    of a commit edit, several times (checked to fail with the prepare before per-line times:
    no document with a before file but a file history's had more than one time)."""
    _, tok, prepared = history
    arrays = open_split(prepared, "train")
    tokens, times, segments = (np.asarray(arrays[name]) for name in ("tokens", "time", "segment"))
    before = tok.ids["<|before|>"]
    mixed = 0
    for row in range(tokens.shape[0]):
        for segment in np.unique(segments[row][segments[row] > 0]):
            mask = segments[row] == segment
            if before in tokens[row][mask] and tok.ids["<|history|>"] not in tokens[row][mask]:
                mixed += len(np.unique(times[row][mask])) > 1
    assert mixed >= 2


def record(position: int, path: str, kind: str, old: str | None, new: str | None, old_path=None):
    diff, _, _ = unified_diff(old, new, old_path or path, path)
    return {
        "path": path,
        "old_path": None if kind == "add" else (old_path or path),
        "change_type": kind,
        "history_position": position,
        "diff": diff,
    }


def test_ages_follow_a_rename_a_modification_and_a_gap():
    """Kept lines keep their times across a modification, a rename and a version mining did not
    see; a deletion ends the chain. Checked to fail with the rename not followed (the renamed
    file's kept lines took the unknown time 2) and with the previous version's times taken as
    they are when mining missed a version (the line the unseen commit changed kept time 1)."""
    v1 = "a\nb\nc\nd\n"
    v2 = "a\nB\nc\nd\n"
    v3 = "a\nB\nc\nD\n"  # renamed to y.py
    v4 = "A\nB\nc\nD\n"  # mining missed this version (a filtered commit, position 4)
    v5 = "A\nB\nc\nD\ne\n"
    rows = [
        record(1, "x.py", "add", None, v1),
        record(2, "x.py", "modify", v1, v2),
        record(3, "y.py", "rename", v2, v3, old_path="x.py"),
        record(5, "y.py", "modify", v4, v5),
        record(6, "y.py", "delete", v5, None),
        record(1, "y.py", "add", None, "z\n"),
    ]
    contents = [(None, v1), (v1, v2), (v2, v3), (v4, v5), (v5, None), (None, "z\n")]
    blame = FileBlame(file_chains(rows))
    result = [blame.times(i, row, *contents[i]) for i, row in enumerate(rows)]
    assert result[0] == LineTimes((), (1, 1, 1, 1))
    assert result[1] == LineTimes((1, 1, 1, 1), (1, 2, 1, 1))
    assert result[2] == LineTimes((1, 2, 1, 1), (1, 2, 1, 3))
    # Line 1 changed in the unseen version: unknown, just before the record (4).
    assert result[3] == LineTimes((4, 2, 1, 3), (4, 2, 1, 3, 5))
    assert result[4] == LineTimes((4, 2, 1, 3, 5), ())
    assert result[5] == LineTimes((), (1,))
    assert all(len(r.after) == line_count(contents[i][1]) for i, r in enumerate(result))


def test_line_times_count_characters_not_bytes(history):
    """Token offsets are characters: with multi-byte characters before the newline, the tokens up
    to the one holding the newline carry line 1's time and the rest line 2's. Checked to fail
    with the newlines located in the UTF-8 bytes (line 2's time then began too early)."""
    _, tok, _ = history
    text = "naïve façade résumé ünïcode\nplain line after it\n"
    parts = [(True, "<|after|>", 0), (False, text, (1, 2))]
    [document] = tokenize([Sample("file", "train", "r", None, parts)], tok, {}, {})
    ids, times = document.tokens.tolist()[1:-1], document.time[1:-1].tolist()
    decode = tok.tokenizer.decode
    newline = next(k for k in range(len(ids)) if "\n" in decode(ids[: k + 1]))
    assert times == [1] * (newline + 1) + [2] * (len(ids) - newline - 1)
