"""Decontamination: copies of benchmark problems are found, ordinary code and boilerplate are not.

Rules are tested on small invented problems; recall and false positives on the real benchmarks in
the shared benchmark copy (tests/shared.py finds it) against standard library sources.
"""

from __future__ import annotations

import inspect
import sysconfig
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.shared import BENCHMARKS
from zen_coder.benchmark_problems import Problem, load_problems
from zen_coder.data.decontaminate import (
    MAX_SHARED_PROBLEMS,
    MIN_SHORT_WORDS,
    BenchmarkIndex,
    run_hashes,
    word_hashes,
)

# Ordinary code to paste copies into: standard library modules that share nothing with benchmarks.
ORDINARY = inspect.getsource(textwrap)


def problem(task_id: str, prompt: str = "", solution: str = "", tests: str = "", **kw) -> Problem:
    fields = {"benchmark": "mbpp", "language": "python", **kw}
    return Problem(task_id=task_id, prompt=prompt, solution=solution, tests=tests, **fields)


def paste(copy: str, into: str = ORDINARY) -> str:
    """`into` with `copy` inserted at a line boundary in its middle."""
    lines = into.splitlines(keepends=True)
    middle = len(lines) // 2
    return "".join(lines[:middle]) + copy + "\n" + "".join(lines[middle:])


def common_prefix(texts: list[str]) -> str:
    """The longest string all `texts` start with."""
    first, last = min(texts), max(texts)  # the two that differ soonest
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), None)
    return first[:size]


def words(count: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(count))


# Hashes.

MASK64 = (1 << 64) - 1
BASE = 0x9E3779B97F4A7C15


def reference_word_hash(word: bytes) -> int:
    """The documented word hash, written out with Python integers."""

    def splitmix64(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
        return x ^ (x >> 31)

    h = sum(splitmix64(byte) * BASE**i for i, byte in enumerate(word)) & MASK64
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * multiplier) & MASK64
    return h ^ (h >> 33)


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_hashes_follow_the_documented_formula(text: str):
    expected = [reference_word_hash(word) for word in text.encode().split()]
    assert word_hashes(text).tolist() == expected
    for length in (1, 3):
        runs = [
            sum(h * BASE**i for i, h in enumerate(expected[start : start + length])) & MASK64
            for start in range(len(expected) - length + 1)
        ]
        assert run_hashes(word_hashes(text), length).tolist() == runs


def test_hash_values_are_fixed():
    """Hashes are stored and compared across processes and releases: they must never change."""
    assert word_hashes("def").tolist() == [14745607719110110178]
    assert word_hashes("héllo wörld").tolist() == [138746273499985411, 3809956684613237317]
    text = "the quick brown fox jumps over the lazy dog while thirteen words are being counted"
    assert run_hashes(word_hashes(text), 13).tolist() == [
        5558289335917801824,
        16932925680455048566,
        5408584581399886776,
    ]


def test_whitespace_between_words_does_not_matter():
    tokens = ["def", "f(x):", "return", "x", "+", "1", "é"]
    spaced = " ".join(tokens)
    for other in ("\n\t".join(tokens), "\r\n    ".join(tokens) + "\n", "  " + "\f\v ".join(tokens)):
        assert word_hashes(other).tolist() == word_hashes(spaced).tolist()
    assert run_hashes(word_hashes(""), 1).size == 0
    assert run_hashes(word_hashes("a b"), 3).size == 0


# Index rules, on invented problems.


def test_long_runs_are_found_and_counted():
    prompt = words(15, "alpha")
    index = BenchmarkIndex.build([problem("1", prompt=prompt)])
    assert len(index) == 3  # runs of 13 words starting at words 0, 1 and 2
    assert len(BenchmarkIndex.build([problem("1", prompt=prompt)], n=5)) == 11
    assert index.match(paste(textwrap.fill(prompt, 30))).task_id == "1"
    assert index.match(paste(words(12, "alpha"))) is None
    with pytest.raises(ValueError, match="n must be at least 1"):
        BenchmarkIndex.build([], n=0)


def test_a_cached_index_is_the_built_one(tmp_path):
    problems = [problem("1", prompt=words(15, "alpha")), problem("2", solution=words(20, "beta"))]
    built = BenchmarkIndex.cached(problems, 13, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    loaded = BenchmarkIndex.cached(problems, 13, tmp_path)
    assert len(loaded) == len(built) == len(BenchmarkIndex.build(problems))
    for text in (paste(words(15, "alpha")), paste(words(20, "beta")), paste(words(9, "alpha"))):
        assert loaded.match(text) == built.match(text)
    changed = [*problems, problem("3", tests=words(14, "gamma"))]
    BenchmarkIndex.cached(changed, 13, tmp_path)  # other problems: another entry
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_short_parts_match_as_a_whole():
    solution = "    return [abs(x - y) for x, y in pairs]\n"  # 9 words
    generic = "return x + y"  # fewer than MIN_SHORT_WORDS words: not indexed
    assert len(generic.split()) < MIN_SHORT_WORDS <= len(solution.split())
    index = BenchmarkIndex.build([problem("1", solution=solution), problem("2", solution=generic)])
    assert len(index) == 1
    copy = "class Pairs:\n    def distances(self):\n        " + solution.strip()
    assert index.match(paste(copy)).task_id == "1"
    assert index.match(paste("return [abs(x - y) for x, y in other_pairs]")) is None
    assert index.match(paste("def add(x, y):\n    return x + y")) is None
    assert index.match("") is None


def test_runs_without_letters_are_not_indexed():
    data = "[" + ", ".join(["0"] * 20) + "]"
    tests = f"assert count_zeros({data}) == 20"
    index = BenchmarkIndex.build([problem("1", tests=tests)])
    assert index.match(paste(f"ZEROS = {data}")) is None
    assert index.match(paste(tests)).task_id == "1"


def test_runs_shared_by_many_problems_are_boilerplate():
    preamble = "import java.util.*; import java.io.*; class Problem { // the header of each problem"
    assert len(preamble.split()) >= 13

    def index_of(count: int) -> BenchmarkIndex:
        bodies = [words(15, f"body{i}_") for i in range(count)]
        return BenchmarkIndex.build(
            [problem(str(i), prompt=f"{preamble}\n{body}") for i, body in enumerate(bodies)]
        )

    assert index_of(MAX_SHARED_PROBLEMS).match(paste(preamble)) is not None
    boilerplate = index_of(MAX_SHARED_PROBLEMS + 1)
    assert boilerplate.match(paste(preamble)) is None
    assert boilerplate.match(paste(f"{preamble}\n{words(15, 'body3_')}")).task_id == "3"


def test_translations_of_one_problem_count_once():
    """A problem's wording recurs in its translations; that must not make it boilerplate."""
    docstring = words(20, "closer")
    translations = [
        problem("HumanEval/3", prompt=docstring, benchmark="humaneval"),
        *(
            problem("HumanEval_3_below_zero", prompt=f"// {docstring}", benchmark=f"multipl-e/{b}")
            for b in (
                "humaneval-java",
                "humaneval-go",
                "humaneval-rs",
                "humaneval-ts",
                "humaneval-cs",
            )
        ),
        problem("3", prompt=docstring),
        problem("3", prompt=docstring, benchmark="mbpp-sanitized"),
        problem("mbpp_3_is_not_prime", prompt=docstring, benchmark="multipl-e/mbpp-lua"),
    ]
    # Two original problems (HumanEval/3 and MBPP 3) share the wording: far below the limit.
    index = BenchmarkIndex.build(translations)
    assert index.match(paste(docstring)) == translations[0]


def test_match_names_the_problem_with_most_shared_runs():
    common = words(13, "shared")
    first = problem("1", prompt=common)
    second = problem("2", prompt=common, solution=words(20, "own"))
    index = BenchmarkIndex.build([first, second])
    assert index.match(paste(common)) == first  # a tie goes to the earlier problem
    assert index.match(paste(f"{common}\n{words(20, 'own')}")) == second


def test_empty_index():
    index = BenchmarkIndex.build([problem("1", solution="pass")])
    assert len(index) == 0
    assert index.match(ORDINARY) is None
    assert len(BenchmarkIndex.build([])) == 0


# The real benchmarks.


@pytest.fixture(scope="module")
def problems() -> dict[tuple[str, str], Problem]:
    return {(p.benchmark, p.task_id): p for p in load_problems(BENCHMARKS)}


@pytest.fixture(scope="module")
def index(problems) -> BenchmarkIndex:
    return BenchmarkIndex.build(list(problems.values()))


@pytest.mark.shared_data
def test_humaneval_solution_reindented_in_a_class(problems, index):
    target = problems["humaneval", "HumanEval/0"]
    method = "def close(self, numbers, threshold):\n" + textwrap.dedent(target.solution)
    copy = "class Checker:\n" + textwrap.indent(method, "    ")
    assert index.match(paste(copy)) == target


@pytest.mark.shared_data
def test_mbpp_test_list(problems, index):
    target = problems["mbpp", "13"]
    copy = "def test_count_common():\n" + textwrap.indent(target.tests, "    ")
    assert index.match(paste(copy)) == target


@pytest.mark.shared_data
def test_multipl_e_java_prompt(problems, index):
    target = problems["multipl-e/humaneval-java", "HumanEval_0_has_close_elements"]
    assert index.match(paste(target.prompt + "        return false;\n    }\n}\n")) == target


@pytest.mark.shared_data
def test_short_humaneval_solution(problems, index):
    target = problems["humaneval", "HumanEval/45"]
    assert len(target.solution.split()) < 13
    assert index.match(paste(f"def area(a, h):\n{target.solution}")) == target


@pytest.mark.shared_data
def test_boilerplate_of_each_benchmark_matches_nothing(problems, index):
    """What every prompt, or every test, of a benchmark starts or ends with (imports, includes,
    `def check(candidate):`, test runners) is not a problem."""
    by_benchmark: dict[str, list[Problem]] = {}
    for p in problems.values():
        by_benchmark.setdefault(p.benchmark, []).append(p)
    for benchmark, group in by_benchmark.items():
        common = [
            common_prefix([p.prompt for p in group]),
            common_prefix([p.tests for p in group]),
            common_prefix([p.tests[::-1] for p in group])[::-1],
        ]
        for text in common:
            assert index.match(paste(text)) is None, (benchmark, text)


@pytest.mark.shared_data
@pytest.mark.parametrize("module", ["argparse", "difflib", "json.decoder", "textwrap", "heapq"])
def test_ordinary_code_matches_nothing(index, module):
    source = inspect.getsource(__import__(module, fromlist=["_"]))
    assert index.match(source) is None


@pytest.mark.shared_data
def test_standard_library_matches_nothing(index):
    root = Path(sysconfig.get_paths()["stdlib"])
    matched = [
        path
        for path in root.rglob("*.py")
        if "site-packages" not in path.parts
        and index.match(path.read_bytes().decode("utf-8", "replace")) is not None
    ]
    assert matched == []
