"""Sample formats, the temporal split and file-history chunking."""

from __future__ import annotations

from zen_coder.data.config import PrepareConfig
from zen_coder.data.samples import (
    RecordSamples,
    file_chains,
    good_instruction,
    history_chunks,
    history_sample,
    validation_commits,
)


def row(commit: str, path: str, kind: str = "modify", old_path: str | None = None, **extra):
    base = {
        "repo": "org/app",
        "commit": commit,
        "message": f"Change {path} in {commit}",
        "path": path,
        "old_path": old_path if old_path is not None else (None if kind == "add" else path),
        "change_type": kind,
        "language": "Python",
        "diff": f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-x\n+y {commit}\n",
        "history_position": 1,
    }
    return base | extra


def test_validation_is_the_newest_fraction_of_commits():
    commits = [(t, f"c{t}") for t in range(40)]
    assert validation_commits(commits, 0.05) == {"c38", "c39"}
    assert validation_commits(commits, 0.0) == set()
    assert validation_commits([(1, "a")], 0.5) == set()  # a single commit stays in train
    assert validation_commits([(1, "a"), (2, "b")], 0.05) == {"b"}
    # Files of one commit share its time: the commit is held out whole.
    assert validation_commits([(1, "a"), (5, "b"), (5, "b"), (3, "c")], 0.3) == {"b"}


def test_instruction_messages_are_filtered():
    config = PrepareConfig()
    assert good_instruction("Add retry with backoff to the HTTP client", config)
    for message in ("fix", "Update", "fix bug", "WIP", "Update README", "typo", "minor fixes"):
        assert not good_instruction(message, config), message
    assert not good_instruction("Add it", config)  # too short
    english = PrepareConfig(english_instructions_only=True)
    assert good_instruction("Add a cache for parsed templates", english)
    assert not good_instruction("Ajoute un cache pour les gabarits analysés", english)
    assert not good_instruction("テンプレートのキャッシュを追加する", english)


def test_chains_follow_renames_and_end_at_deletions():
    rows = [
        row("c1", "a.py", "add"),
        row("c2", "b.py", "add"),
        row("c3", "a.py"),
        row("c4", "src/a.py", "rename", old_path="a.py"),
        row("c5", "b.py", "delete"),
        row("c6", "b.py", "add"),
        row("c7", "src/a.py"),
    ]
    assert file_chains(rows) == [[0, 2, 3, 6], [1, 4], [5]]


def test_history_chunks_never_mix_splits_and_respect_the_budget():
    rows = [
        row(f"c{i}", "a.py", "add" if i == 0 else "modify", history_position=i + 1)
        for i in range(6)
    ]
    splits = ["train"] * 4 + ["validation"] * 2
    chunks = list(history_chunks(rows, splits, budget_chars=10_000))
    assert [(c.rows, c.split) for c in chunks] == [([0, 1, 2, 3], "train"), ([4, 5], "validation")]
    small = list(history_chunks(rows, splits, budget_chars=len(rows[0]["diff"]) * 2 + 60))
    assert all(len(chunk.rows) <= 2 for chunk in small)
    assert [i for chunk in small for i in chunk.rows] == [0, 1, 2, 3, 4, 5]
    sample = history_sample(chunks[1], rows, before="x = 1\n")
    assert sample.split == "validation" and sample.commits == ["c4", "c5"]
    kinds = [value for special, value, _ in sample.parts if special]
    assert kinds[:5] == ["<|history|>", "<|repo|>", "<|path|>", "<|lang|>", "<|before|>"]
    assert kinds.count("<|change|>") == 2
    times = {value: time for special, value, time in sample.parts if not special}
    # The file as it was after its 4th change, its lines' origin not given: all just before it.
    assert times["x = 1\n"] == (4,)
    assert times[rows[5]["diff"]] == 6


def test_record_formats():
    config = PrepareConfig(edit_target="both", fim_rate=1.0, fim_spm_rate=0.0)
    record = row("c9", "a.py", history_position=7, message="Add a cache for parsed templates")
    samples = list(RecordSamples(config).all(record, "old\n", "new content here\n", "train"))
    assert [s.format for s in samples] == ["commit_edit", "fim", "instruction"]
    edit, fim, instruction = samples
    assert [v for s, v, _ in edit.parts if s][-4:] == [
        "<|before|>",
        "<|message|>",
        "<|diff|>",
        "<|after|>",
    ]
    # Headers, message and diff carry the commit's time; the before file, given alone, is of
    # unknown origin (just before the commit) and the after file's changed line is the commit's.
    times = [time for _, value, time in edit.parts if value not in ("old\n", "new content here\n")]
    assert set(times) == {7}
    assert [t for _, v, t in edit.parts if v in ("old\n", "new content here\n")] == [(6,), (7,)]
    pieces = {v: t for s, v, t in fim.parts if not s}
    assert [v for s, v, _ in fim.parts if s][-3:] == [
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    ]
    texts = [v for s, v, _ in fim.parts if not s][-3:]
    prefix, suffix, middle = texts
    assert prefix + middle + suffix == "new content here\n"
    assert pieces and instruction.parts[0][1] == "<|instruction|>"
    # The same record always gives the same split points.
    again = list(RecordSamples(config).all(record, "old\n", "new content here\n", "train"))[1]
    assert again.parts == fim.parts


def test_suffix_prefix_middle_and_plain_files():
    record = row("c1", "a.py", "add", history_position=1)
    spm = RecordSamples(PrepareConfig(fim_rate=1.0, fim_spm_rate=1.0)).file(
        record, "abcdef\n", "train"
    )
    assert [v for s, v, _ in spm.parts if s][-3:] == [
        "<|fim_suffix|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
    ]
    plain = RecordSamples(PrepareConfig(fim_rate=0.0)).file(record, "abcdef\n", "train")
    assert plain.format == "file" and plain.parts[-1][1] == "abcdef\n"
