"""Which MultiPL-E problems no completion can pass, because they do not compile around any body.

For each HumanEval- and MBPP-derived set of the ten languages zen-coder runs, every problem is
compiled (or, in an interpreted language, syntax-checked) with the language's placeholder body,
exactly as `zen-coder eval` does before excluding them; the excluded task ids are printed with
the compiler's reason, and each set's check time, a measure of each language's compile time.

    python benchmarks/multipl_e_uncompilable.py [--data ../shared/benchmarks] [--slots 2]
        [--languages js cpp ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zen_coder.benchmark_problems import load_problems
from zen_coder.evaluation.languages import runner_for, uncompilable

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = ("py", "js", "ts", "go", "rs", "java", "cpp", "php", "rb", "sh")
SOURCES = ("humaneval", "mbpp")


def check_set(path: Path, slots: int) -> None:
    if not path.is_file():
        print(f"{path.stem}: skipped, {path} not found")
        return
    problems = load_problems(path)
    runner = runner_for(problems[0].language)
    if reason := runner.missing():
        print(f"{path.stem}: skipped, {reason}")
        return
    start = time.monotonic()
    excluded = uncompilable(problems, slots=slots)
    seconds = time.monotonic() - start
    per_problem = seconds * slots / len(problems)
    print(
        f"{path.stem}: {len(excluded)}/{len(problems)} excluded "
        f"({seconds:.0f} s, {per_problem:.2f} s per problem with {slots} in parallel)"
    )
    for task_id, why in excluded.items():
        print(f"  {task_id}: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "benchmarks",
        help="benchmark folder (default: ../shared/benchmarks)",
    )
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--languages", nargs="+", default=LANGUAGES, choices=LANGUAGES)
    args = parser.parse_args()
    for code in args.languages:
        for source in SOURCES:
            check_set(args.data / "multipl-e" / f"{source}-{code}.jsonl", args.slots)


if __name__ == "__main__":
    main()
