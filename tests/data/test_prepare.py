"""`zen-coder prepare` end to end, on repositories mined from real git histories."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from tests.gitrepo import GitRepo
from tests.shared import BENCHMARKS
from zen_coder.data.config import PrepareConfig
from zen_coder.data.loader import PackedDataset, open_split
from zen_coder.data.pipeline import prepare
from zen_coder.data.tokenizer import load_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec

SALT = b"prepare-tests"
MARKER = "zz_validation_only_marker_9f27"
SMALL = PrepareConfig(vocab_size=1024, context_length=128, tokenizer_train_chars=2_000_000)


def build_history(path: Path, commits: int = 24, extra: dict[str, str] | None = None) -> GitRepo:
    """A small Python project with a real history; the newest commit carries MARKER."""
    repo = GitRepo(path)
    for i in range(commits - 1):
        module = f"pkg/module_{i % 4}.py"
        body = "".join(
            f"def step_{j}(value):\n    return value * {j} + {i}\n\n\n" for j in range(6)
        )
        repo.write(module, body)
        repo.commit(f"Make step {i} scale its input by the step number")
    for name, content in (extra or {}).items():
        repo.write(name, content)
    repo.write("pkg/module_0.py", f"def newest():\n    return '{MARKER}'\n")
    repo.commit("Add the newest helper")
    return repo


def mined(tmp_path: Path, repo: GitRepo) -> Path:
    out = tmp_path / "mined"
    mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    return out


def decoded(prepared: Path, split: str) -> str:
    tokenizer = load_tokenizer(prepared)
    tokens = open_split(prepared, split)["tokens"]
    return tokenizer.decode(np.asarray(tokens).ravel().tolist(), skip_special_tokens=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepare")
    repo = build_history(root / "repo")
    out = root / "prepared"
    prepare(mined(root, repo), out, SMALL, benchmarks=[str(fake_benchmarks(root))])
    return out


def fake_benchmarks(root: Path) -> Path:
    """A HumanEval-format file with one invented problem, for runs that only need the mechanism."""
    folder = root / "benchmarks"
    folder.mkdir(exist_ok=True)
    problem = {
        "task_id": "HumanEval/0",
        "prompt": 'def invented_problem(numbers):\n    """Return the numbers doubled."""\n',
        "entry_point": "invented_problem",
        "canonical_solution": "    return [number * 2 for number in numbers]\n",
        "test": "def check(candidate):\n    assert candidate([1, 2]) == [2, 4]\n",
    }
    with gzip.open(folder / "HumanEval.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(problem) + "\n")
    return folder


def test_outputs_load_with_the_loader_and_hugging_face(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["sequences"]["train"] > 0 and manifest["sequences"]["validation"] > 0
    formats = {key.split("/")[1] for key in manifest["samples"]}
    assert formats == {"commit_edit", "file", "fim", "file_history", "instruction"}
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(prepared)
    assert hf.decode(hf.encode("def f(x):\n    return x\n")) == "def f(x):\n    return x\n"
    assert hf.model_max_length == SMALL.context_length
    batch = next(iter(PackedDataset(prepared, "train", batch_size=2)))
    assert batch["tokens"].shape == (2, SMALL.context_length)
    repos = json.loads((prepared / "repos.json").read_text())
    languages = json.loads((prepared / "languages.json").read_text())
    assert repos == ["<unknown>", "repo"] and languages[0] == "<unknown>"
    content = batch["segment"] > 0
    assert (batch["repo"][content] == 1).all()
    assert set(batch["language"][content].tolist()) <= {languages.index("Python")}
    assert (batch["time"][content] >= 0).all() and batch["time"].max() > 1


def test_no_training_sequence_holds_validation_content(prepared):
    assert MARKER not in decoded(prepared, "train")
    assert MARKER in decoded(prepared, "validation")


def test_rerun_reuses_and_changed_settings_rebuild(prepared, tmp_path):
    manifest = json.loads((prepared / "manifest.json").read_text())
    mined_dir = Path(manifest["mined"])
    benchmarks = manifest["benchmarks"]
    again = prepare(mined_dir, prepared, SMALL, benchmarks=benchmarks)
    assert again.reused
    other = prepared.parent / "other"
    shutil.copytree(prepared, other)
    changed = dataclasses.replace(SMALL, seed=1)
    rebuilt = prepare(mined_dir, other, changed, benchmarks=benchmarks)
    assert not rebuilt.reused
    assert rebuilt.manifest["config"]["seed"] == 1


@pytest.mark.parametrize(
    "source", ["invented", pytest.param("multipl-e", marks=pytest.mark.shared_data)]
)
def test_planted_benchmark_content_never_reaches_a_training_shard(tmp_path, source):
    if source == "multipl-e":
        java = BENCHMARKS / "multipl-e" / "humaneval-java.jsonl"
        rows = [json.loads(line) for line in java.open()]
        planted = rows[0]["prompt"] + rows[0]["tests"]
        benchmarks = [str(java)]
        needle = rows[0]["prompt"].strip().splitlines()[-1]
    else:  # an invented problem in HumanEval's format shows the mechanism without the copy
        folder = fake_benchmarks(tmp_path)
        problem = json.loads(gzip.decompress((folder / "HumanEval.jsonl.gz").read_bytes()))
        planted = problem["prompt"] + problem["canonical_solution"]
        benchmarks = [str(folder)]
        needle = problem["canonical_solution"].strip()
    repo = build_history(tmp_path / "repo", extra={"vendorless/Problem.java": planted})
    out = tmp_path / "prepared"
    report = prepare(mined(tmp_path, repo), out, SMALL, benchmarks=benchmarks)
    removed = report.manifest["decontamination"]
    assert removed["removed"] >= 1
    assert {entry["path"] for entry in removed["samples"]} == {"vendorless/Problem.java"}
    assert needle not in decoded(out, "train")
    assert needle not in decoded(out, "validation")


def test_bad_inputs_are_one_line_errors(tmp_path, prepared):
    with pytest.raises(ZenCoderError, match="not a mined dataset"):
        prepare(tmp_path / "nothing", tmp_path / "out", SMALL)
    mined_dir = Path(json.loads((prepared / "manifest.json").read_text())["mined"])
    copy = tmp_path / "copy"
    shutil.copytree(mined_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ZenCoderError, match="schema version 99"):
        prepare(copy, tmp_path / "out", SMALL)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    shard = copy / manifest["shards"][0]
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(ZenCoderError, match="is corrupt"):
        prepare(copy, tmp_path / "out", SMALL, benchmarks=[])
    assert not (tmp_path / "out").exists()
    nothing = PrepareConfig(
        commit_edits=False, file_histories=False, file_contents=False, instructions=False
    )
    with pytest.raises(ZenCoderError, match="no training samples"):
        prepare(mined_dir, tmp_path / "empty", nothing, benchmarks=[])


def test_a_tokenizer_can_be_reused(prepared, tmp_path):
    mined_dir = Path(json.loads((prepared / "manifest.json").read_text())["mined"])
    out = tmp_path / "reused"
    report = prepare(mined_dir, out, SMALL, tokenizer=prepared, benchmarks=[])
    assert report.manifest["tokenizer_source"] == str(prepared.resolve())
    original = json.loads((prepared / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == original
    table = pq.read_table(next((mined_dir / "data").rglob("*.parquet")))
    assert table.num_rows > 0


def test_a_given_tokenizer_is_compared_by_content(prepared, tmp_path):
    """A copy of the same tokenizer elsewhere is reused; another tokenizer written over the same
    path is not. (Compared by path, both failed: the copy rebuilt, the changed file reused.)"""
    mined_dir = Path(json.loads((prepared / "manifest.json").read_text())["mined"])
    first, copy = tmp_path / "first", tmp_path / "copy"
    for folder in (first, copy):
        folder.mkdir()
        shutil.copy(prepared / "tokenizer.json", folder / "tokenizer.json")
    out = tmp_path / "out"
    report = prepare(mined_dir, out, SMALL, tokenizer=first, benchmarks=[])
    assert prepare(mined_dir, out, SMALL, tokenizer=copy, benchmarks=[]).reused
    changed = Tokenizer.from_file(str(first / "tokenizer.json"))
    changed.add_tokens(["zz_added_token"])
    changed.save(str(first / "tokenizer.json"))
    rebuilt = prepare(mined_dir, out, SMALL, tokenizer=first, benchmarks=[])
    assert not rebuilt.reused
    assert rebuilt.manifest["vocab_size"] == report.manifest["vocab_size"] + 1
