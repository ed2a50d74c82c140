"""Every language's runner, on hand-written completions of MultiPL-E HumanEval problems.

`solutions/<code>/<task_id>[.<what>].<expected status>.<ext>` is a completion of that problem of
`humaneval-<code>.jsonl`: correct ones must pass, and a wrong answer, a compile error, an endless
loop, a segmentation fault and an early `exit(0)` must each get their own status. The problems
are read from the shared benchmark copy (found by tests/shared.py, never copied into the project);
tests that need it skip without it (and fail under CI), and a language whose toolchain is missing
skips with the runner's own reason.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tests.shared import BENCHMARKS
from zen_coder.benchmark_problems import Problem, load_problems
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.languages import (
    RUNNERS,
    Runner,
    _reason,
    placeholder_completion,
    runner_for,
    uncompilable,
)
from zen_coder.evaluation.sandbox import Completed, Limits, Sandbox

MULTIPL_E = BENCHMARKS / "multipl-e"
SOLUTIONS = Path(__file__).parent / "solutions"
# MultiPL-E's language codes (the solutions' folder names) and the runners' language names.
LANGUAGES = {
    "py": "python",
    "js": "javascript",
    "ts": "typescript",
    "go": "go",
    "rs": "rust",
    "java": "java",
    "cpp": "c++",
    "php": "php",
    "rb": "ruby",
    "sh": "shell",
}
TIMEOUT_SECONDS = 1.0  # run limit for the endless loops: long enough for any runtime to start


@functools.cache
def problems(code: str) -> dict[str, Problem]:
    path = MULTIPL_E / f"humaneval-{code}.jsonl"
    return {problem.task_id: problem for problem in load_problems(path)}


def installed(language: str) -> Runner:
    runner = runner_for(language)
    if reason := runner.missing():
        pytest.skip(reason)
    return runner


@pytest.fixture
def sandbox():
    with Sandbox(0) as box:
        yield box


def solution_files() -> list[Path]:
    return sorted(SOLUTIONS.glob("*/*"))


def test_every_language_has_solutions_of_each_kind():
    """Three correct completions per language, and a wrong, an endless and (where the language
    compiles) an ill-typed one."""
    statuses = {code: [] for code in LANGUAGES}
    for path in solution_files():
        statuses[path.parent.name].append(path.name.split(".")[-2])
    for code, found in statuses.items():
        wanted = {"failed", "timeout"} | (
            {"compile_error"} if RUNNERS[LANGUAGES[code]].compile else set()
        )
        assert found.count("passed") >= 3 and wanted <= set(found), code


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "path", solution_files(), ids=lambda path: f"{path.parent.name}/{path.stem}"
)
def test_solution_gets_its_verdict(path, sandbox):
    task_id, *_, expected, _ = path.name.split(".")
    problem = problems(path.parent.name)[task_id]
    runner = installed(LANGUAGES[path.parent.name])
    program = f"{problem.prompt}{path.read_text()}\n{problem.tests}"
    run_seconds = TIMEOUT_SECONDS if expected == "timeout" else None

    verdict = runner.execute(program, sandbox, run_seconds)

    assert verdict.status == expected, verdict
    assert verdict.passed == (expected == "passed")
    if expected == "timeout":
        assert verdict.reason == f"timed out after {TIMEOUT_SECONDS:.1f} s"
    elif expected == "compile_error":
        assert verdict.reason.startswith("compile: ") and len(verdict.reason) > 20, verdict
    elif expected == "crashed":
        assert verdict.reason.startswith("killed by SIG"), verdict
    elif expected == "failed":
        assert verdict.reason and "\n" not in verdict.reason


@pytest.mark.shared_data
def test_python_passes_despite_output_beyond_what_the_sandbox_keeps(sandbox):
    """The proof of a finished run is a file, so output that pushes past the kept bytes is fine."""
    problem = problems("py")["HumanEval_53_add"]
    chatty = "    print('x' * 100_000)\n    return x + y\n"
    verdict = installed("python").execute(f"{problem.prompt}{chatty}\n{problem.tests}", sandbox)
    assert verdict.status == "passed", verdict


@pytest.mark.shared_data
def test_uncompilable_finds_translation_defects():
    js, cpp = problems("js"), problems("cpp")
    installed("javascript")
    installed("c++")
    chosen = [
        js["HumanEval_51_remove_vowels"],
        js["HumanEval_53_add"],
        cpp["HumanEval_137_compare_one"],
        cpp["HumanEval_53_add"],
    ]
    found = uncompilable(chosen)
    assert set(found) == {"HumanEval_51_remove_vowels", "HumanEval_137_compare_one"}
    assert "error" in found["HumanEval_137_compare_one"]


@pytest.mark.shared_data
def test_placeholder_compiles_in_every_language():
    """A problem without defects in each language: nothing to report, so every placeholder
    compiles (or parses) and the problem's tests around it too."""
    clean = []
    for code, language in LANGUAGES.items():
        installed(language)
        clean.append(problems(code)["HumanEval_53_add"])
    assert uncompilable(clean) == {}


@pytest.mark.shared_data
def test_uncompilable_over_a_whole_interpreted_set():
    """All of humaneval-js: exactly the one problem the benchmark's README lists."""
    installed("javascript")
    assert set(uncompilable(list(problems("js").values()))) == {"HumanEval_51_remove_vowels"}


def test_unknown_language_is_one_line_error_naming_the_supported_ones():
    with pytest.raises(ZenCoderError, match="cobol") as error:
        runner_for("cobol")
    assert "\n" not in str(error.value)
    assert all(language in str(error.value) for language in LANGUAGES.values())
    with pytest.raises(ZenCoderError, match="cobol"):
        placeholder_completion("cobol")


def test_every_runner_has_a_placeholder_and_a_way_to_check_syntax():
    for language, runner in RUNNERS.items():
        assert placeholder_completion(language) == runner.placeholder != ""
        assert runner.compile or runner.check, language


def test_missing_toolchain_names_the_package_to_install(sandbox):
    runner = Runner(
        language="cobol",
        source="main.cob",
        run=("zen-coder-no-such-compiler", "main.cob"),
        run_limits=Limits(),
        compile_limits=Limits(),
        placeholder="",
        tools=(("zen-coder-no-such-compiler", "gnucobol"),),
    )
    reason = runner.missing()
    assert reason is not None and "\n" not in reason
    assert "zen-coder-no-such-compiler" in reason and "apt-get install" in reason
    assert "gnucobol" in reason
    assert runner.execute("", sandbox).status == "error"
    assert RUNNERS["python"].missing() is None


@pytest.mark.parametrize(
    ("stderr", "stdout", "reason"),
    [
        (
            'Traceback (most recent call last):\n  File "main.py", line 9, in <module>\n'
            "    assert candidate(1, 2) == 3\nAssertionError\n",
            "",
            "AssertionError",
        ),
        (
            "warning: unused variable\nerror[E0308]: mismatched types\n --> main.rs:3:5\n",
            "",
            "error[E0308]: mismatched types",
        ),
        (
            "# command-line-arguments\n./main_test.go:14:9: undefined: y\n",
            "",
            "./main_test.go:14:9: undefined: y",
        ),
        ("", "Started\nF\nFailure: test_add(TestHumanEval)\n", "Failure: test_add(TestHumanEval)"),
        (
            "terminate called after throwing an instance of 'int'\n",
            "",
            "terminate called after throwing an instance of 'int'",
        ),
        (
            "main.rb:10: syntax error, unexpected constant, expecting ')'\n...Java\"\"))\n... ^\n",
            "",
            "main.rb:10: syntax error, unexpected constant, expecting ')'",
        ),
        ("", "", "exit status 1"),
    ],
)
def test_reason_is_the_first_meaningful_line(stderr, stdout, reason, sandbox):
    completed = Completed("exited", 1, "exit status 1", stdout, stderr, 0.1)
    assert _reason(completed, sandbox) == reason
