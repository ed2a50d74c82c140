"""Run many untrusted programs: in parallel sandboxes, each distinct program once.

Each worker thread owns one sandbox slot (its own unprivileged uid when running as root, see
`sandbox.py`), so the process limits of one program never count against another's. Programs are
keyed by their full text, language and time limit: the samples of a benchmark repeat themselves
often (greedy decoding, short answers), and a repeated program is run once.
"""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TypeVar

from zen_coder.evaluation.languages import Verdict, runner_for
from zen_coder.evaluation.sandbox import Sandbox

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Job:
    """One program to test."""

    language: str
    program: str
    run_seconds: float | None = None  # None: the language's default time limit

    def key(self) -> str:
        text = f"{self.language}\0{self.run_seconds}\0{self.program}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def execute(
    jobs: Sequence[Job],
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> list[Verdict]:
    """The verdict of every job, in order; identical jobs run once, `workers` at a time.
    `progress(count)` is called as jobs finish, with the number of jobs each run settled."""
    by_key: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        by_key.setdefault(job.key(), []).append(index)
    groups = list(by_key.values())

    def run(indices: list[int], slot: int) -> Verdict:
        job = jobs[indices[0]]
        with Sandbox(slot) as sandbox:
            return runner_for(job.language).execute(job.program, sandbox, job.run_seconds)

    verdicts: list[Verdict | None] = [None] * len(jobs)
    weights = [len(indices) for indices in groups]
    settled = in_slots(groups, workers, run, progress, weights)
    for indices, verdict in zip(groups, settled, strict=True):
        for index in indices:
            verdicts[index] = verdict
    return verdicts  # type: ignore[return-value]


def in_slots(
    items: Sequence[T],
    workers: int,
    work: Callable[[T, int], R],
    progress: Callable[[int], None] | None = None,
    weights: Sequence[int] | None = None,
) -> list[R]:
    """`work(item, slot)` for every item, `workers` at a time, each call holding a sandbox slot
    no other call holds; results in order. `progress(weight)` as each item finishes."""
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    def run(item: T) -> R:
        slot = slots.get()
        try:
            return work(item, slot)
        finally:
            slots.put(slot)

    results: list[R | None] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if progress is not None:
                progress(weights[index] if weights is not None else 1)
    return results  # type: ignore[return-value]
