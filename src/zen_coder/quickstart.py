"""The quickstart: mine a repository's history, prepare it, train the tiny model twice, report.

`zen-coder quickstart` runs every stage on the embedded tiny recipe (the settings' defaults,
also written out in configs/tiny.toml) on a 2-core CPU in minutes: it mines the git history of
the current repository, prepares it, trains the `tiny` model with the card's four history
techniques and again without them (same steps, same data), and writes report.md with a
loss-curve plot: validation loss of the untrained and the trained model, and the ablation side
by side. Rerunning reuses what is already mined, prepared and trained.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zen_coder.data.config import PrepareConfig
from zen_coder.data.pipeline import prepare
from zen_coder.files import write_atomic, write_bytes_atomic
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.model.config import preset
from zen_coder.training.config import TrainConfig
from zen_coder.training.metrics import read_metrics
from zen_coder.training.trainer import TrainReport, train

RUNS = {"with": "techniques on", "without": "techniques off"}


@dataclass
class QuickstartReport:
    out: Path
    report: Path
    plot: Path
    untrained: float
    trained: dict[str, float]  # validation loss per run
    elapsed: float


def quickstart(
    repo: Path,
    out: Path,
    *,
    steps: int = 200,
    benchmarks: Sequence[str] = ("humaneval",),
    say: Callable[[str], None] = print,
    progress=None,
) -> QuickstartReport:
    started = time.monotonic()
    say(f"1/4 mining the history of {repo.resolve()}")
    mined = mine([RepoSpec(str(repo))], out / "mined", MineConfig())
    totals = mined.manifest["totals"]
    say(f"    {totals['records']:,} records from {totals['commits_seen']:,} commits")
    say("2/4 preparing: tokenizer, samples, temporal split, packed sequences")
    prepared = prepare(
        out / "mined", out / "prepared", PrepareConfig(), benchmarks=list(benchmarks)
    )
    tokens = sum(prepared.manifest["tokens"].values())
    say(f"    {tokens:,} tokens in {sum(prepared.manifest['sequences'].values()):,} sequences")
    config = dataclasses.replace(TrainConfig(), steps=steps, eval_every=max(1, steps // 4))
    reports: dict[str, TrainReport] = {}
    for number, (name, label) in enumerate(RUNS.items(), start=3):
        say(f"{number}/4 training the tiny model, {label} ({steps} steps)")
        model = preset("tiny") if name == "with" else preset("tiny").without_techniques()
        reports[name] = train(
            out / "prepared", out / f"train-{name}", model, config, progress=progress
        )
    plot = out / "loss.png"
    _plot(out, plot)
    untrained = _untrained(out / "train-with")
    trained = {name: report.validation["loss"] for name, report in reports.items()}
    report_path = out / "report.md"
    text = _report_text(out, mined.manifest, prepared.manifest, reports, untrained, trained, plot)
    write_bytes_atomic(report_path, text.encode())
    elapsed = time.monotonic() - started
    say(f"done in {elapsed / 60:.1f} minutes; report: {report_path}")
    return QuickstartReport(out, report_path, plot, untrained, trained, elapsed)


def _untrained(run: Path) -> float:
    return next(
        e["loss"] for e in read_metrics(run) if e["kind"] == "validation" and e["step"] == 0
    )


def _plot(out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for (name, label), color in zip(RUNS.items(), ("tab:blue", "tab:orange"), strict=True):
        events = read_metrics(out / f"train-{name}")
        train_events = [e for e in events if e["kind"] == "train"]
        validation = [e for e in events if e["kind"] == "validation"]
        axes.plot(
            [e["step"] for e in train_events],
            [e["lm"] for e in train_events],
            color=color,
            alpha=0.5,
            label=f"training, {label}",
        )
        axes.plot(
            [e["step"] for e in validation],
            [e["loss"] for e in validation],
            "o-",
            color=color,
            label=f"validation, {label}",
        )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("next-token loss (nats)")
    axes.set_title("tiny zen-coder on this repository's history")
    axes.legend()
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)


def _report_text(out, mined, prepared, reports, untrained, trained, plot) -> str:
    totals = mined["totals"]
    on, off = reports["with"], reports["without"]
    languages = sorted(set(on.validation["by_language"]) | set(off.validation["by_language"]))
    lines = [
        "# zen-coder quickstart",
        "",
        "The tiny model trained on this repository's own git history, on CPU.",
        "",
        "## Data",
        "",
        f"- mined: {totals['commits_seen']:,} commits, {totals['commits_kept']:,} kept, "
        f"{totals['records']:,} file-change records",
        f"- prepared: {prepared['vocab_size']:,}-token vocabulary, "
        + ", ".join(
            f"{split} {count:,} sequences of {prepared['context_length']}"
            for split, count in prepared["sequences"].items()
        )
        + " (validation = each repository's newest commits)",
        f"- decontamination: {prepared['decontamination']['removed']} samples removed",
        "",
        "## Validation loss",
        "",
        f"![loss curves]({plot.name})",
        "",
        "| model | validation loss |",
        "|---|---|",
        f"| untrained | {untrained:.3f} |",
        f"| trained, {on.steps} steps, techniques on | {trained['with']:.3f} |",
        "",
        f"Training lowered the validation loss by {untrained - trained['with']:.3f} nats "
        f"({(1 - trained['with'] / untrained) * 100:.0f} %).",
        "",
        "## Ablation: the four history techniques",
        "",
        "Repository embeddings, temporal attention, language routing and the contrastive loss, "
        "on and off; same steps, same data, same seed.",
        "",
        "| validation loss | techniques on | techniques off |",
        "|---|---|---|",
        f"| all languages | {trained['with']:.3f} | {trained['without']:.3f} |",
    ]
    for language in languages:
        with_value = on.validation["by_language"].get(language)
        without_value = off.validation["by_language"].get(language)
        lines.append(f"| {language} | {_number(with_value)} | {_number(without_value)} |")
    lines += [
        "",
        f"Training time: {on.elapsed:,.0f} s with the techniques, {off.elapsed:,.0f} s without "
        f"({on.tokens:,} tokens each).",
        "",
        "## Outputs",
        "",
        f"- models: `{out / 'train-with' / 'model'}` (zen-coder), `{out / 'train-with' / 'hf'}` "
        "(Hugging Face)",
        f"- metrics: `{out / 'train-with' / 'metrics.jsonl'}`, TensorBoard in "
        f"`{out / 'train-with' / 'tensorboard'}`",
        "",
    ]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
