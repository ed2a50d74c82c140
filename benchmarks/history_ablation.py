"""Do the card's four history techniques carry information, or only parameters? Controls, 3 seeds.

The corpus is mined, prepared and trained on as a user would (`mine` with the card's filters,
`prepare` with its temporal split, `train` on the tiny preset): by default the five real
repositories of ../shared/repos (two Python, Go, Rust, TypeScript), or any repositories given
with --repo. Every variant below is trained for the same steps on the same data with each seed:

    all on                      the four techniques, as the tiny preset has them
    all off                     a standard Mixtral-style MoE
    no <technique>              that technique off alone (4 variants)
    <channel> shuffled          all on, but one side channel's information destroyed while its
                                distribution is kept (`train.shuffle`): random repository ids per
                                document (repository embedding and contrastive loss), times
                                permuted within each document (temporal attention), random
                                language ids per document (language routing)

A technique gains from information only if "all on" beats both its "off" and its shuffled
control: a shuffled control has the technique's parameters and none of its information, so a gain
that comes from capacity shows up as a gain of the control too. Measured on held-out future
commits (prepare's validation split: each repository's newest commits; --eval-sequences of it,
spread over the split, the same for every run): mean next-token loss, overall and per language.
Per technique the verdict is "helps" (beats off and shuffled by more than the seed spread),
"hurts" (worse than off by more than it) or "no effect"; the issue's aim is a gap to the shuffled
control of more than three seed standard deviations.

    python benchmarks/history_ablation.py                       # 5 bundles, 3 seeds: ~70 min
    python benchmarks/history_ablation.py --repo ~/src/a --repo ~/src/b --steps 400
    python benchmarks/history_ablation.py --seeds 5 --jobs 1    # more seeds, one run at a time

Runs are resumable: each run's result is kept under --out and a rerun trains only what is missing.
Writes results.json, ablation.md (the tables) and ablation.png to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from mine_throughput import available_bundles, bundle_repo

from zen_coder.data.config import PrepareConfig
from zen_coder.data.pipeline import prepare
from zen_coder.errors import ZenCoderError
from zen_coder.files import write_bytes_atomic, write_json_atomic
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.model.config import ModelConfig, preset
from zen_coder.training.config import TrainConfig

WORKSPACE = Path(tempfile.gettempdir()) / "zen-coder-bench-history"
ROOT = Path(__file__).resolve().parents[1]
ALL_ON, ALL_OFF = "all on", "all off"
TEMPLATE = "zen-coder"  # the history prompt in the native model's own training format
# Files of at most this many characters before and after (about 200 tokens each), answered in at
# most this many tokens: prompt and answer fit the tiny preset's 512-token context.
HISTORY_MAX_CHARS = 600
HISTORY_NEW_TOKENS = 240


@dataclass(frozen=True)
class Technique:
    """One of the card's techniques: its model switch, and the channel its information rides."""

    name: str
    switch: str  # ModelConfig field
    channel: str  # TrainConfig.shuffle value

    @property
    def off(self) -> str:
        return f"no {self.name}"

    @property
    def shuffled(self) -> str:
        return SHUFFLED[self.channel]


TECHNIQUES = (
    Technique("repository embedding", "repo_embeddings", "repo"),
    Technique("temporal attention", "temporal_attention", "time"),
    Technique("contrastive loss", "contrastive_loss", "repo"),
    Technique("language routing", "language_routing", "language"),
)
SHUFFLED = {
    "repo": "repository ids shuffled",
    "time": "times shuffled",
    "language": "language ids shuffled",
}


@dataclass(frozen=True)
class Variant:
    name: str
    model: ModelConfig
    shuffle: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")


def variants() -> list[Variant]:
    tiny = preset("tiny").with_techniques()
    found = [Variant(ALL_ON, tiny), Variant(ALL_OFF, tiny.without_techniques())]
    found += [Variant(t.off, dataclasses.replace(tiny, **{t.switch: False})) for t in TECHNIQUES]
    found += [Variant(name, tiny, (channel,)) for channel, name in SHUFFLED.items()]
    return found


# -- the corpus -----------------------------------------------------------------------------------


def corpus(repos: list[Path], bundles: list[str], benchmarks: list[str], out: Path) -> Path:
    """The repositories mined (card's filters) and prepared (temporal split, decontaminated
    against `benchmarks`) under `out`; a rerun finds them mined and prepared in seconds."""
    specs = [RepoSpec(str(bundle_repo(name)), name=name) for name in bundles]
    specs += [RepoSpec(str(path.resolve())) for path in repos]
    if not specs:
        raise ZenCoderError("no repositories: give --repo PATH or --bundles NAME")
    started = time.perf_counter()
    mined = mine(specs, out / "mined", MineConfig(), workers=os.cpu_count() or 1)
    totals = mined.manifest["totals"]
    print(
        f"mined {len(specs)} repositories: {totals['records']:,} records from "
        f"{totals['commits_seen']:,} commits ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    started = time.perf_counter()
    prepared = prepare(out / "mined", out / "prepared", PrepareConfig(), benchmarks=benchmarks)
    manifest, folder = prepared.manifest, out / "prepared"
    repos = json.loads((folder / "repos.json").read_text())
    languages = json.loads((folder / "languages.json").read_text())
    print(
        f"prepared: {manifest['sequences']} sequences, {sum(manifest['tokens'].values()):,} "
        f"tokens; repositories {', '.join(repos[1:])}; languages {', '.join(languages[1:])} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return folder


def validation_batches(prepared: Path, sequences: int, micro_batch: int) -> int:
    """Micro-batches of up to `sequences` validation sequences (spread over the split by the
    trainer's validation): each run scores the same ones."""
    index = json.loads((prepared / "validation" / "index.json").read_text())
    return max(1, math.ceil(min(index["sequences"], sequences) / micro_batch))


# -- the runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    variant: Variant
    seed: int
    prepared: Path
    folder: Path
    train: TrainConfig
    threads: int
    problems: tuple  # the history problems every model redoes (HistoryProblem), read once


def run_job(job: Job) -> dict:
    """One run in this (worker) process: trained unless its result is kept in the run folder,
    then scored on the history benchmark unless that is kept too."""
    import torch

    from zen_coder.training.trainer import train

    torch.set_num_threads(job.threads)
    done = job.folder / "ablation-result.json"
    if done.exists():
        result = json.loads(done.read_text())
    else:
        config = dataclasses.replace(job.train, seed=job.seed, shuffle=job.variant.shuffle)
        report = train(job.prepared, job.folder, job.variant.model, config)
        result = {
            "variant": job.variant.name,
            "seed": job.seed,
            "validation_loss": report.validation["loss"],
            "by_language": report.validation["by_language"],
            "validation_tokens": report.validation["tokens"],
            "train_loss": report.train_loss,
            "steps": report.steps,
            "seconds": report.elapsed,
        }
    if "history" not in result and job.problems:
        result["history"] = history_scores(job)
    write_json_atomic(done, result, indent=2)
    return result


def history_scores(job: Job) -> dict:
    """`history:PREPARED` on the run's model without the projects' tests: exact match and edit
    similarity of the files it writes for held-out commits, given the file before and the
    message, greedy, with the problem's repository and language channels. Only files short
    enough for the tiny model's context (prompt and answer) are asked."""
    from zen_coder.evaluation.history_benchmark import history_prompt, score, stop_sequences
    from zen_coder.inference.generation import GenerationConfig
    from zen_coder.inference.native import NativeGenerator

    problems = job.problems
    generator = NativeGenerator(job.folder / "model")
    groups: dict[tuple[str, str], list] = {}
    for problem in problems:
        groups.setdefault((problem.repo, problem.language), []).append(problem)
    exact, similarity = [], []
    for (repo, language), group in groups.items():
        config = GenerationConfig(
            max_new_tokens=HISTORY_NEW_TOKENS,
            stop=stop_sequences(TEMPLATE, group[0].markers),
            extra={"repo": repo, "language": language},
        )
        prompts = [history_prompt(problem, TEMPLATE) for problem in group]
        completions = generator.complete(prompts, config)
        for problem, (completion,) in zip(group, completions, strict=True):
            scored = score(problem, completion, TEMPLATE)
            exact.append(scored.exact)
            similarity.append(scored.similarity)
    return {
        "problems": len(problems),
        "exact_match": statistics.mean(exact) if exact else float("nan"),
        "edit_similarity": statistics.mean(similarity) if similarity else float("nan"),
    }


def jobs(args: argparse.Namespace, prepared: Path, train: TrainConfig) -> Iterator[Job]:
    from zen_coder.evaluation.history_benchmark import load_history_problems

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    problems = ()
    if args.history_problems:
        limit = args.history_problems
        problems = tuple(load_history_problems(prepared, limit, HISTORY_MAX_CHARS, tests=False))
    for seed in range(args.seeds):
        for variant in variants():
            folder = args.out / "runs" / f"{variant.slug}-seed{seed}"
            yield Job(variant, seed, prepared, folder, train, threads, problems)


def run_all(args: argparse.Namespace, prepared: Path, train: TrainConfig) -> list[dict]:
    """Every (variant, seed), `args.jobs` at a time in processes of their own; runs already
    trained and scored are read back."""
    results, todo = [], []
    for job in jobs(args, prepared, train):
        done = job.folder / "ablation-result.json"
        kept = json.loads(done.read_text()) if done.exists() else None
        if kept is not None and ("history" in kept or not args.history_problems):
            results.append(kept)
        else:
            todo.append(job)
    total = len(results) + len(todo)
    print(f"{len(todo)} of {total} runs to train or score ({len(results)} done)", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job): job for job in todo}
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            history = result.get("history") or {}
            print(
                f"  [{len(results)}/{total}] {result['variant']}, seed {result['seed']}: "
                f"validation loss {result['validation_loss']:.4f}, history edit similarity "
                f"{history.get('edit_similarity', float('nan')):.3f} ({result['seconds']:.0f} s "
                f"training; {time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
    return results


# -- the report -----------------------------------------------------------------------------------


def losses_by_variant(results: list[dict]) -> dict[str, dict[int, float]]:
    """variant -> seed -> validation loss."""
    table: dict[str, dict[int, float]] = {}
    for result in results:
        table.setdefault(result["variant"], {})[result["seed"]] = result["validation_loss"]
    return table


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def gaps(table: dict[str, dict[int, float]], other: str) -> list[float]:
    """Per seed, `other`'s loss minus all on's: the same seed is the same data order (and, for
    a shuffled control, the same initial weights), so the pair differs by the variant alone."""
    on = table[ALL_ON]
    return [table[other][seed] - on[seed] for seed in sorted(on) if seed in table[other]]


def verdicts(table: dict[str, dict[int, float]]) -> list[dict]:
    """Per technique: the mean gaps to off and to its shuffled control (positive: "all on" is
    better), the seed spread (the largest standard deviation over seeds of the three variants'
    losses), the verdict by it, and the aim: the gap to the shuffled control above three
    standard deviations, both of the losses over seeds and of the per-seed gaps."""
    rows = []
    for technique in TECHNIQUES:
        on, off = list(table[ALL_ON].values()), list(table[technique.off].values())
        shuffled = list(table[technique.shuffled].values())
        sigma = max(spread(on), spread(off), spread(shuffled))
        to_off, to_shuffled = gaps(table, technique.off), gaps(table, technique.shuffled)
        gap_off, gap_shuffled = statistics.mean(to_off), statistics.mean(to_shuffled)
        if gap_off > sigma and gap_shuffled > sigma:
            verdict = "helps"
        elif gap_off < -sigma:
            verdict = "hurts"
        else:
            verdict = "no effect"
        rows.append(
            {
                "technique": technique.name,
                "off": technique.off,
                "shuffled": technique.shuffled,
                "gap_to_off": gap_off,
                "gap_to_shuffled": gap_shuffled,
                "seed_std": sigma,
                "paired_std_to_off": spread(to_off),
                "paired_std_to_shuffled": spread(to_shuffled),
                "verdict": verdict,
                "aim_met": gap_shuffled > 3 * max(sigma, spread(to_shuffled)),
            }
        )
    return rows


def history_by_variant(results: list[dict], metric: str) -> dict[str, list[float]]:
    table: dict[str, list[float]] = {}
    for result in results:
        if result.get("history"):
            table.setdefault(result["variant"], []).append(result["history"][metric])
    return table


def markdown(
    table: dict[str, dict[int, float]], rows: list[dict], results: list[dict], steps: int
) -> str:
    seeds = max(len(losses) for losses in table.values())
    similarity = history_by_variant(results, "edit_similarity")
    exact = history_by_variant(results, "exact_match")
    problems = max((r["history"]["problems"] for r in results if r.get("history")), default=0)
    lines = [
        f"Held-out future commits, tiny preset, {steps} steps, {seeds} seeds (mean ± standard "
        "deviation over seeds): validation loss (lower is better), and on history:PREPARED "
        f"({problems} problems, no tests) the edit similarity and exact match of the files "
        "written (higher is better):",
        "",
        "| variant | validation loss | seeds | edit similarity | exact match |",
        "|---|---:|---|---:|---:|",
    ]
    for variant in variants():
        values = [table[variant.name][seed] for seed in sorted(table.get(variant.name, {}))]
        if values:
            seeds_text = ", ".join(f"{value:.4f}" for value in values)
            lines.append(
                f"| {variant.name} | {statistics.mean(values):.4f} ± {spread(values):.4f} "
                f"| {seeds_text} | {mean_and_spread(similarity.get(variant.name))} "
                f"| {mean_and_spread(exact.get(variant.name))} |"
            )
    lines += [
        "",
        "Gains of all on (positive: all on has the lower loss), mean ± standard deviation of "
        "the per-seed gaps; the seed spread is the largest standard deviation of the three "
        "variants' losses:",
        "",
        "| technique | gain over off | gain over shuffled control | seed spread | verdict | "
        "gain over shuffled > 3 spreads |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['technique']} | {row['gap_to_off']:+.4f} ± {row['paired_std_to_off']:.4f} "
            f"| {row['gap_to_shuffled']:+.4f} ± {row['paired_std_to_shuffled']:.4f} "
            f"| {row['seed_std']:.4f} | {row['verdict']} | {'yes' if row['aim_met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def mean_and_spread(values: list[float] | None) -> str:
    if not values:
        return "—"
    return f"{statistics.mean(values):.3f} ± {spread(values):.3f}"


def plot(table: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [variant.name for variant in variants() if variant.name in table]
    values = [list(table[name].values()) for name in names]
    means = [statistics.mean(v) for v in values]
    errors = [spread(v) if len(v) > 1 else 0.0 for v in values]
    colors = [
        "tab:blue" if name == ALL_ON else "tab:orange" if "shuffled" in name else "tab:gray"
        for name in names
    ]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    axis.barh(names, means, xerr=errors, color=colors, capsize=3)
    axis.invert_yaxis()
    low = min(m - e for m, e in zip(means, errors, strict=True))
    high = max(m + e for m, e in zip(means, errors, strict=True))
    axis.set_xlim(low - (high - low) * 0.5, high + (high - low) * 0.2)
    axis.set_xlabel("validation loss on future commits (mean ± sd over seeds)")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(args: argparse.Namespace, results: list[dict], train: TrainConfig) -> None:
    table = losses_by_variant(results)
    rows = verdicts(table)
    text = markdown(table, rows, results, train.steps)
    print("\n" + text)
    write_bytes_atomic(args.out / "ablation.md", text.encode())
    write_json_atomic(
        args.out / "results.json",
        {"train": train.to_dict(), "runs": results, "techniques": rows},
        indent=2,
    )
    figure = args.out / "ablation.png"
    plot(table, figure, f"history techniques and their shuffled controls, {args.seeds} seeds")
    print(f"results: {args.out / 'results.json'}\ntables: {args.out / 'ablation.md'}")
    print(f"plot: {figure}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, action="append", default=[], help="a git checkout")
    parser.add_argument(
        "--bundles",
        nargs="*",
        help="bundles of ../shared/repos (default: all of them, unless --repo is given)",
    )
    parser.add_argument(
        "--benchmarks",
        nargs="*",
        default=[str(ROOT.parent / "shared" / "benchmarks")],
        help="decontamination sources (default: ../shared/benchmarks)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--history-problems",
        type=int,
        default=24,
        help="held-out commits each model redoes (history:PREPARED, no tests; 0: none)",
    )
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument(
        "--eval-sequences",
        type=int,
        default=512,
        help="validation sequences scored, spread over the split (default 512)",
    )
    parser.add_argument("--out", type=Path, default=WORKSPACE)
    args = parser.parse_args()
    if args.bundles is None:
        args.bundles = [] if args.repo else available_bundles()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: the verdicts need a spread")
    return args


def main() -> None:
    args = parse_arguments()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = corpus(args.repo, args.bundles, args.benchmarks, args.out)
    base = TrainConfig()
    train = dataclasses.replace(
        base,
        steps=args.steps,
        warmup_steps=min(base.warmup_steps, args.steps // 10),
        eval_every=args.steps,
        eval_batches=validation_batches(prepared, args.eval_sequences, base.micro_batch),
        checkpoint_every=args.steps,
        keep_checkpoints=0,
        log_every=max(1, args.steps // 5),
    )
    results = run_all(args, prepared, train)
    report(args, results, train)
    print(f"benchmark finished in {(time.perf_counter() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    try:
        main()
    except ZenCoderError as error:
        sys.exit(f"history_ablation: {error}")
