"""The history benchmark on a real repository: mined, prepared, its validation commits read from the
prepared manifest, scored with the project's own pytest tests in the sandbox."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.data import bases
from tests.gitrepo import GitRepo
from zen_coder.data.config import PrepareConfig
from zen_coder.data.loader import open_split
from zen_coder.data.pack import tokenize
from zen_coder.data.pipeline import prepare
from zen_coder.data.samples import RecordSamples
from zen_coder.data.tokenizer import load_tokenizer, read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.history_benchmark import (
    HistoryProblem,
    edit_similarity,
    extract_file,
    history_prompt,
    levenshtein,
    load_history_problems,
    score,
    stop_sequences,
)
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec

SALT = b"history-benchmark-tests"
FRACTION = 0.2  # of 23 commits: the newest 5 are validation (prepare's default would hold out 2)
PREPARE = PrepareConfig(vocab_size=1024, context_length=128, validation_fraction=FRACTION)
TRAINING_COMMITS = 18
SLOT = 7  # a sandbox slot of its own: other evaluation tests may hold slot 0 meanwhile

TESTS_HEADER = "from calc.ops import add, subtract\n"


def ops(add: str, scales: range, scale_three: str = "x * 3") -> str:
    """calc/ops.py: `add`, `subtract` and one `scale_i` per training commit."""
    text = f"def add(*values):\n    {add}\n\n\ndef subtract(a, b):\n    return a - b\n"
    for i in scales:
        body = scale_three if i == 3 else f"x * {i}"
        text += f"\n\ndef scale_{i}(x):\n    return {body}\n"
    return text


def ops_tests(scales: range, add_test: str) -> str:
    imports = "".join(f"from calc.ops import scale_{i}\n" for i in scales)
    text = f"{TESTS_HEADER}{imports}\n\ndef test_add():\n    {add_test}\n"
    text += "\n\ndef test_subtract():\n    assert subtract(5, 3) == 2\n"
    for i in scales:
        text += f"\n\ndef test_scale_{i}():\n    assert scale_{i}(2) == {2 * i}\n"
    return text


def build_project(path: Path) -> tuple[GitRepo, dict[str, str]]:
    """A Python project with pytest tests: 18 training commits, then 5 validation commits: a new
    file only, a README edit, a tested change, a change that breaks a test, and its fix."""
    repo = GitRepo(path)
    repo.write("pyproject.toml", '[project]\nname = "calc"\nversion = "0.1.0"\n')
    repo.write("calc/__init__.py", '"""A tiny calculator."""\n')
    repo.write("README.md", "# calc\n\nA tiny calculator.\n")
    two = "return values[0] + values[1]"
    two_test = "assert add(1, 2) == 3"
    for i in range(1, TRAINING_COMMITS + 1):
        repo.write("calc/ops.py", ops(two, range(1, i + 1)))
        repo.write("tests/test_ops.py", ops_tests(range(1, i + 1), two_test))
        repo.commit(f"Add scale_{i}, which multiplies its input by {i}")
    scales = range(1, TRAINING_COMMITS + 1)
    commits = {}
    repo.write("calc/extra.py", "def negate(x):\n    return -x\n")
    commits["add_only"] = repo.commit("Add a negate function in a new module")
    repo.write("README.md", "# calc\n\nA tiny calculator: add, subtract and scale numbers.\n")
    commits["readme"] = repo.commit("Say what the calculator does in the README")
    repo.write("calc/ops.py", ops("return sum(values)", scales))
    repo.write("tests/test_ops.py", ops_tests(scales, "assert add(1, 2, 3) == 6"))
    commits["tested"] = repo.commit("Let add take any number of values")
    repo.write("calc/ops.py", ops("return sum(values)", scales, scale_three="x * 4"))
    commits["broken"] = repo.commit("Make scale_3 multiply by four")
    repo.write("calc/ops.py", ops("return sum(values)", scales, scale_three="x + x + x"))
    commits["fixed"] = repo.commit("Compute scale_3 by addition, as the tests expect")
    return repo, commits


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[GitRepo, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("history")
    repo, commits = build_project(root / "calc")
    out = root / "mined"
    mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    return repo, commits, out


def prepared(mined: Path, fraction: float = FRACTION) -> Path:
    """`zen-coder prepare` of `mined` into a folder beside it, holding out `fraction`."""
    out = mined.parent / f"prepared-{fraction}"
    prepare(mined, out, dataclasses.replace(PREPARE, validation_fraction=fraction), benchmarks=[])
    return out


@pytest.fixture(scope="module")
def calc(project) -> Path:
    """The project's prepared data."""
    return prepared(project[2])


@pytest.fixture(scope="module")
def problems(calc) -> list[HistoryProblem]:
    return load_history_problems(calc)


def find(problems: list[HistoryProblem], commit: str, path: str) -> HistoryProblem:
    return next(p for p in problems if p.commit == commit and p.path == path)


def mined_rows(out: Path) -> list[dict]:
    return [
        row
        for shard in sorted(out.glob("data/**/*.parquet"))
        for row in pq.read_table(shard).to_pylist()
    ]


def test_problems_are_the_validation_commits_modify_records(project, problems):
    repo, commits, out = project
    newest = repo.git("rev-list", "--max-count=5", "HEAD").split()
    rows = mined_rows(out)
    expected = [
        (row["commit"], row["path"])
        for row in sorted(rows, key=lambda row: (row["committer_time"], row["path"]))
        if row["commit"] in newest and row["change_type"] == "modify"
    ]
    assert [(p.commit, p.path) for p in problems] == expected
    assert {row["change_type"] for row in rows if row["commit"] == commits["add_only"]} == {"add"}
    assert expected == [
        (commits["readme"], "README.md"),
        (commits["tested"], "calc/ops.py"),
        (commits["tested"], "tests/test_ops.py"),
        (commits["broken"], "calc/ops.py"),
        (commits["fixed"], "calc/ops.py"),
    ]
    tested = find(problems, commits["tested"], "calc/ops.py")
    assert tested.task_id == f"calc@{commits['tested'][:12]}:calc/ops.py"
    assert tested.parent == commits["readme"]
    assert tested.message.startswith("Let add take any number of values")
    assert "values[0] + values[1]" in tested.before and "sum(values)" in tested.after
    assert tested.diff.startswith("--- a/calc/ops.py")
    assert tested.source == str(repo.path)


def test_test_commands_only_for_python_files_of_a_tested_project(project, problems):
    _, commits, _ = project
    command = find(problems, commits["tested"], "calc/ops.py").test_command
    assert command is not None and command[:3] == ("python", "-m", "pytest")
    assert command[-1] == "tests/test_ops.py"
    assert find(problems, commits["readme"], "README.md").test_command is None


def test_the_commits_are_those_prepare_held_out_for_validation(project, calc, problems):
    """Read from the manifest: prepared with another fraction, the problems follow it. (With the
    split recomputed from the old default fraction, this test failed: 2 commits, not 5.)"""
    repo, commits, mined = project
    newest = set(repo.git("rev-list", "--max-count=5", "HEAD").split())
    manifest = json.loads((calc / "manifest.json").read_text())
    assert manifest["split"]["repositories"]["calc"]["validation_commits"] == 5
    assert {p.commit for p in problems} == newest - {commits["add_only"]}  # add_only adds only
    tokenizer = load_tokenizer(calc)
    text = {
        split: tokenizer.decode(open_split(calc, split)["tokens"].ravel().tolist())
        for split in ("train", "validation")
    }
    for problem in problems:
        subject = problem.message.splitlines()[0]
        assert subject in text["validation"] and subject not in text["train"]
    halves = load_history_problems(prepared(mined, 0.5), tests=False)
    assert len({p.commit for p in halves}) > len(newest)


def test_size_limit_and_no_tests(calc, problems):
    small = load_history_problems(calc, max_chars=100)
    assert [p.path for p in small] == ["README.md"]
    untested = load_history_problems(calc, tests=False)
    assert [p.test_command for p in untested] == [None] * len(problems)


def test_repositories_take_turns_and_tests_need_the_repository(tmp_path):
    repos = []
    for name in ("alpha", "beta"):
        repo = GitRepo(tmp_path / name)
        for i in range(4):
            repo.write(f"{name}.py", f"def {name}():\n    return {i} * {i}  # {name}\n")
            repo.commit(f"Return {i} squared from {name}")
        repos.append(repo)
    mined = tmp_path / "mined"
    mine([RepoSpec(str(repo.path)) for repo in repos], mined, workers=1, salt=SALT)
    out = prepared(mined, 0.5)
    problems = load_history_problems(out)
    assert [p.repo for p in problems] == ["alpha", "beta", "alpha", "beta"]
    assert load_history_problems(out, limit=2) == problems[:2]
    repos[0].path.rename(tmp_path / "moved")
    with pytest.raises(ZenCoderError, match="tests=False"):
        load_history_problems(out)
    assert len(load_history_problems(out, tests=False)) == 4
    repos[1].write("beta.py", "def beta():\n    return 16\n")
    repos[1].commit("Return sixteen from beta")
    mine([RepoSpec(str(repos[1].path))], mined, workers=1, salt=SALT)
    with pytest.raises(ZenCoderError, match=r"changed after .* rerun `zen-coder prepare"):
        load_history_problems(out, tests=False)


def one_line_error(prepared: Path, match: str) -> str:
    with pytest.raises(ZenCoderError, match=match) as error:
        load_history_problems(prepared, tests=False)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_folder_that_is_not_prepared_data_is_one_line_error(tmp_path, project, calc):
    one_line_error(tmp_path / "nowhere", "not a prepared dataset; run `zen-coder prepare`")
    assert "pass the PREPARED folder" in one_line_error(project[2], "is a mined dataset")
    older = tmp_path / "older"
    shutil.copytree(calc, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["split"]
    manifest["format_version"] = manifest["identity"]["format_version"] = 1
    (older / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(older, "did not record its train/validation split; rerun `zen-coder prepare")
    assert not prepare(project[2], older, PREPARE, benchmarks=[]).reused  # the fix works
    assert load_history_problems(older, tests=False) == load_history_problems(calc, tests=False)
    (older / "manifest.json").write_text("{not json")
    one_line_error(older, "unreadable")


def test_native_prompt_is_the_prepare_sample_up_to_the_new_file(project, problems):
    _, commits, out = project
    problem = find(problems, commits["tested"], "calc/ops.py")
    row = next(
        r for r in mined_rows(out) if r["commit"] == problem.commit and r["path"] == problem.path
    )
    sample = RecordSamples(PrepareConfig(edit_target="after")).commit_edit(
        row, row["old_content"], row["new_content"], "validation"
    )
    text = "".join(value for _, value, _ in sample.parts)
    assert history_prompt(problem, "zen-coder") + problem.after == text
    assert history_prompt(problem, "zen-coder").endswith("<|after|>")
    assert stop_sequences("zen-coder") == ("<|endoftext|>",)


def test_a_base_tokenizers_markers_spell_the_native_prompt(project, tmp_path):
    """Prepared with a Qwen-shaped instruct base (EOS <|im_end|>, <|repo_name|>, <|file_sep|>),
    the prompt spells the base's tokens, and encoded as the native backend encodes a prompt it
    is the very ids `prepare` trained on, up to the new file. Broken by hand once each: spelled
    with zen-coder's own names (<|repo|>, which this tokenizer lacks), the ids differed; stopped
    at the role's own name, the stop was <|endoftext|>, which this model never ends with."""
    _, commits, mined = project
    base = bases.qwen(tmp_path / "base", eos="<|im_end|>")
    out = tmp_path / "prepared"
    config = dataclasses.replace(PREPARE, edit_target="after")
    prepare(mined, out, config, tokenizer=base.path, benchmarks=[])
    problem = find(load_history_problems(out, tests=False), commits["tested"], "calc/ops.py")
    prompt = history_prompt(problem, "zen-coder")
    assert prompt.startswith("<|repo_name|>calc<|file_sep|>calc/ops.py<|lang|>Python<|before|>")
    assert stop_sequences("zen-coder", problem.markers) == ("<|im_end|>",)
    assert extract_file(f"{problem.after}<|file_sep|>x", "zen-coder", problem.markers) == (
        problem.after
    )
    row = next(
        r for r in mined_rows(mined) if r["commit"] == problem.commit and r["path"] == problem.path
    )
    sample = RecordSamples(config).commit_edit(
        row, row["old_content"], row["new_content"], "validation"
    )
    tokenizer = read_tokenizer(out)
    trained = tokenize([sample], tokenizer, {}, {})[0].tokens.tolist()
    tokenizer.tokenizer.encode_special_tokens = False  # as NativeGenerator reads prompts
    prompted = tokenizer.tokenizer.encode(prompt, add_special_tokens=False).ids
    assert prompted[-1] == tokenizer.ids["<|after|>"] and len(trained) > len(prompted)
    assert prompted == trained[: len(prompted)]


def test_plain_prompt_asks_for_the_whole_file_in_a_fence(problems):
    problem = problems[1]
    prompt = history_prompt(problem, "plain")
    assert f"```python\n{problem.before}```" in prompt
    assert problem.message in prompt and "complete updated file" in prompt
    fenced = HistoryProblem(**{**problem.__dict__, "before": 'doc = """\n```\nx\n```\n"""\n'})
    assert "````python\n" in history_prompt(fenced, "plain")
    with pytest.raises(ZenCoderError, match="unknown history prompt template"):
        history_prompt(problem, "chatml")


def test_plain_extraction():
    file = "def f():\n    return 1\n"
    assert extract_file(f"Here it is:\n```python\n{file}```\nDone.", "plain") == file
    snippet_then_file = f"Change `g`:\n```\ng()\n```\nThe file:\n```python\n{file}```\n"
    assert extract_file(snippet_then_file, "plain") == file
    assert extract_file(f"````python\n{file}```\n````", "plain") == f"{file}```\n"
    assert extract_file(f"```python\n{file}", "plain") == file  # ran out of tokens
    assert extract_file(file, "plain") == file
    assert extract_file(f"{file}<|endoftext|><|repo|>x", "zen-coder") == file


def test_true_file_scores_exact_and_passes(project, problems):
    problem = find(problems, project[1]["tested"], "calc/ops.py")
    result = score(problem, problem.after + "<|endoftext|>", "zen-coder", SLOT)
    assert (result.exact, result.similarity, result.tests) == (True, 1.0, "passed")
    plain = score(problem, f"```python\n{problem.after.rstrip()}\n```", "plain", SLOT)
    assert (plain.exact, plain.tests) == (True, "passed")


def test_close_but_wrong_file_fails_its_tests(project, problems):
    problem = find(problems, project[1]["tested"], "calc/ops.py")
    wrong = problem.after.replace("return sum(values)", "return sum(values) + 1")
    result = score(problem, wrong, "zen-coder", SLOT)
    assert not result.exact and 0.5 < result.similarity < 1
    assert result.tests == "failed"


def test_reference_that_fails_its_tests_is_excluded(project, problems):
    problem = find(problems, project[1]["broken"], "calc/ops.py")
    assert score(problem, problem.after, "zen-coder", SLOT).tests == "reference_failed"


def test_files_without_tests_are_not_run(project, problems):
    problem = find(problems, project[1]["readme"], "README.md")
    result = score(problem, problem.before, "zen-coder", SLOT)
    assert result.tests is None and not result.exact
    assert result.similarity == edit_similarity(problem.before, problem.after)


def test_edit_similarity_by_hand():
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)  # k→s, e→i, +g
    assert edit_similarity("flaw", "lawn") == 0.5  # -f, +n
    assert edit_similarity("abc", "abc") == edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity("a\nb\n", "a\nc\n") == 0.75


def textbook_levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_bit_parallel_levenshtein_matches_the_textbook_table():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choices("abc\n", k=rng.randint(0, 90)))
        b = "".join(rng.choices("abc\n", k=rng.randint(0, 90)))
        assert levenshtein(a, b) == textbook_levenshtein(a, b), (a, b)


def test_levenshtein_is_fast_on_two_unrelated_large_files():
    rng = random.Random(1)
    a, b = ("".join(rng.choices("abcdefgh ():\n", k=16_000)) for _ in range(2))
    started = time.perf_counter()
    distance = levenshtein(a, b)
    assert time.perf_counter() - started < 5
    assert 0 < distance <= 16_000
