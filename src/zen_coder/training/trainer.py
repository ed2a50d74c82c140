"""`zen-coder train`: the training loop, from one CPU to FSDP2 + tensor parallel clusters.

One process, or one per GPU under `torchrun`: each data-parallel rank streams its share of the
packed sequences, accumulates gradients up to the global batch, clips them and steps AdamW on a
warmup-then-cosine schedule. A non-finite loss or gradient skips the step; too many in a row stop
the run with a checkpoint. Validation runs on the temporal split. Checkpoints (model, optimizer,
scheduler, data position, random states) make a killed run resume exactly; the final model is
exported as a zen-coder model folder and as a Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as torch_distributed
import torch.nn.functional as F
from tokenizers import Tokenizer

from zen_coder.data.loader import PackedDataset, PackedLoader, open_split, read_rows, spread_rows
from zen_coder.data.tokenizer import read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.files import read_json, write_json_atomic
from zen_coder.model import hf
from zen_coder.model.config import ModelConfig
from zen_coder.model.folder import TOKENIZER_FILES, is_model_folder, load_model, model_sources
from zen_coder.model.model import IGNORE, ZenCoder, next_token_targets
from zen_coder.model.weights import Source, build
from zen_coder.training import checkpoint
from zen_coder.training.config import TrainConfig
from zen_coder.training.controls import TRAINING, VALIDATION, Controls
from zen_coder.training.lora import apply_lora
from zen_coder.training.metrics import MetricsWriter
from zen_coder.training.optim import build_optimizer, build_scheduler
from zen_coder.training.parallelize import (
    Distributed,
    init_distributed,
    materialize,
    parallelize,
    shutdown,
)

CHANNELS = ("repo", "language", "time", "segment")
# Settings a resumed run may change: how long, how often to look, how to load data.
RESUMABLE = {"steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"}
RESUMABLE |= {"log_every", "num_workers"}
# Settings whose behaviour before they existed was not their default: a run folder without one
# ran like this.
BEFORE_THE_SETTING = {"repos_per_batch": 0}
# What a base checkpoint cannot say: the data's tables and the run's chosen techniques.
FROM_RECIPE = (
    "n_repos",
    "n_languages",
    "repo_embeddings",
    "repo_dropout",
    "temporal_attention",
    "temporal_frequencies",
    "temporal_max_distance",
    "language_routing",
    "contrastive_loss",
    "contrastive_weight",
    "contrastive_temperature",
    "balancing",
    "balance_loss_weight",
    "router_z_loss_weight",
    "expert_bias_rate",
    "document_masking",
    "attention",
)

Progress = Callable[[int], Callable[[int, dict], None]]


@dataclass
class TrainReport:
    out: Path
    steps: int
    tokens: int
    elapsed: float
    initial_validation: dict | None = None
    validation: dict | None = None
    train_loss: float | None = None
    skipped_steps: int = 0
    resumed_from: int | None = None
    model_dir: Path | None = None
    hf_dir: Path | None = None
    # What the history techniques had to work with (`history_information`).
    history: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _prepared(data: Path) -> dict:
    missing = f"{data} is not prepared data; run `zen-coder prepare` first"
    manifest, repos, languages = (
        read_json(data / name, missing, "run `zen-coder prepare` again")
        for name in ("manifest.json", "repos.json", "languages.json")
    )
    return {**manifest, "repo_names": repos, "language_names": languages}


def _fit_to_data(config: ModelConfig, prepared: dict) -> ModelConfig:
    return dataclasses.replace(
        config,
        vocab_size=prepared["vocab_size"],
        context_length=prepared["context_length"],
        n_repos=len(prepared["repo_names"]),
        n_languages=len(prepared["language_names"]),
    )


def _check_run_folder(out: Path, effective: dict) -> None:
    """A run folder is resumed only with the settings it was started with (but RESUMABLE)."""
    path = out / "config.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    # A setting the run's config.json lacks was added to zen-coder after the run started, which
    # then ran with its default.
    defaults = {
        "model": ModelConfig().to_dict(),
        "train": {**TrainConfig().to_dict(), **BEFORE_THE_SETTING},
    }
    changed = sorted(
        f"model.{key}"
        for key, value in effective["model"].items()
        if previous["model"].get(key, defaults["model"][key]) != value
    ) + sorted(
        f"train.{key}"
        for key, value in effective["train"].items()
        if key not in RESUMABLE and previous["train"].get(key, defaults["train"][key]) != value
    )
    if previous.get("data") != effective["data"]:
        changed.append("data")
    if changed:
        raise ZenCoderError(
            f"{out} holds a run with other settings ({', '.join(changed)}); resume it with the "
            "same recipe, or train into a new --out folder"
        )


def _start_model(
    config: ModelConfig,
    train: TrainConfig,
    prepared: dict,
    data: Path,
    dist: Distributed,
    fresh: bool,
) -> ZenCoder:
    """The model, built on the meta device, parallelized, then materialized with only this
    rank's shards (`zen_coder.model.weights.build`): drawn from the initial distribution, or
    read from the base (`init_from`), each rank only the slices it holds. Every layout starts
    from the same weights as one process. A resumed run (not `fresh`) reads no base, as its
    checkpoint replaces every weight, unless it is a LoRA run."""
    config, sources = _starting_weights(config, train, prepared, data)
    # A checkpoint holds what trains: every weight, or a LoRA run's adapters alone (its frozen
    # base comes from the base again).
    model = build(
        config,
        sources if fresh or train.lora.enabled else {},
        seed=train.seed,
        prepare=lambda model: prepare_model(model, train, dist),
        materialize=lambda model: materialize(model, dist, train.cpu_offload),
    )
    return model.train()


def prepare_model(model: ZenCoder, train: TrainConfig, dist: Distributed) -> ZenCoder:
    """The built model made the one a run trains, in place: LoRA adapters on a frozen base
    (`[train.lora]`), then parallelized as the recipe says."""
    return parallelize_as_recipe(apply_lora(model, train.lora, low_precision(train)), train, dist)


def low_precision(train: TrainConfig) -> torch.dtype | None:
    """bfloat16 in a bfloat16 run, None in a float32 one: the dtype FSDP gathers parameters
    in, and LoRA keeps its frozen base in."""
    return torch.bfloat16 if train.dtype == "bfloat16" else None


def parallelize_as_recipe(model: ZenCoder, train: TrainConfig, dist: Distributed) -> ZenCoder:
    """`parallelize` with the recipe's options; the memory planner splits its model this way."""
    return parallelize(
        model,
        dist,
        low_precision(train),
        compile=train.compile,
        activation_checkpointing=train.activation_checkpointing,
        cpu_offload=train.cpu_offload,
    )


def _starting_weights(
    config: ModelConfig, train: TrainConfig, prepared: dict, data: Path
) -> tuple[ModelConfig, dict[str, Source]]:
    """The model to build and where its weights come from: none for a new model; for a base,
    its weights fitted to the data. The data's tables decide the language and repository rows
    (a zen-coder base's rows follow their names), and the token rows grow to the data's
    vocabulary (a padded base vocabulary stays as it is)."""
    if not train.init_from:
        return config, {}
    base = Path(train.init_from)
    _check_tokenizer(base, data, prepared)
    vocabulary = prepared["vocab_size"]
    if is_model_folder(base):
        if train.upcycle_experts:
            raise ZenCoderError(
                f"train setting upcycle_experts upcycles a Hugging Face base; {base} is a "
                "zen-coder model, which starts as it is: set upcycle_experts = 0"
            )
        tables = {"languages": prepared["language_names"], "repos": prepared["repo_names"]}
        return model_sources(base, vocab_size=vocabulary, **tables)
    overrides = {name: getattr(config, name) for name in FROM_RECIPE}
    return hf.pretrained_sources(
        base,
        experts=train.upcycle_experts or None,
        upcycle=train.upcycle,
        vocab_size=vocabulary,
        seed=train.seed,
        **overrides,
    )


def _check_tokenizer(base: Path, data: Path, prepared: dict) -> None:
    """Refuse data tokenized with another tokenizer than the base's (one trained by `prepare`,
    or another model's): every token of the base's tokenizer.json must keep its id in the
    data's, which may only add markers after them. A base folder without a tokenizer.json
    cannot be checked."""
    theirs = base / "tokenizer.json"
    if not theirs.is_file():
        return
    expected = Tokenizer.from_file(str(theirs)).get_vocab(with_added_tokens=True)
    got = Tokenizer.from_file(str(data / "tokenizer.json")).get_vocab(with_added_tokens=True)
    if any(got.get(token) != number for token, number in expected.items()):
        source = prepared.get("tokenizer_source", "unknown")
        raise ZenCoderError(
            f"{data} was prepared with another tokenizer ({source}) than the base model {base}; "
            f"prepare the data again with --tokenizer {base}"
        )


def _batches(loader: PackedLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Batches forever: epoch after epoch, from wherever the loader stands."""
    while True:
        yield from loader


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _reduce(values: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """Sum over the data-parallel ranks (tensor-parallel ranks hold the same numbers)."""
    if dist.mesh is not None and dist.dp_size > 1:
        torch_distributed.all_reduce(values, group=dist.mesh["dp"].get_group())
    return values


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    data: Path,
    config: TrainConfig,
    dist: Distributed,
    pad_id: int,
    languages: list[str],
    controls: Controls | None = None,
) -> dict:
    """Mean next-token loss on the validation split, overall and per language: the training
    run's own check (pass@k on benchmarks is `zen-coder eval`'s).

    It reads `eval_batches` micro-batches of sequences spread evenly over the split (packing
    mixes only nearby documents: the split's first batches may miss whole repositories), all
    data-parallel ranks together (rank r takes batches r, r + ranks, ...), so every layout
    scores the same tokens. A control run's channels are shuffled here as in training, the same
    way at every evaluation (keyed by the batch's place in the split), so its losses compare
    from step to step.
    """
    arrays = open_split(data, "validation")
    rows = spread_rows(len(arrays["tokens"]), config.eval_batches * config.micro_batch)
    loss_sum = torch.zeros(len(languages), dtype=torch.float64, device=dist.device)
    count = torch.zeros(len(languages), dtype=torch.float64, device=dist.device)
    model.eval()
    for place in range(dist.dp_rank, -(-len(rows) // config.micro_batch), dist.dp_size):
        batch = read_rows(
            arrays, rows[place * config.micro_batch : (place + 1) * config.micro_batch]
        )
        if controls is not None:
            batch = controls.apply(batch, stream=VALIDATION, step=0, micro=place, rank=0)
        batch = {name: value.to(dist.device) for name, value in batch.items()}
        targets = next_token_targets(batch["tokens"], batch["segment"], pad_id)
        with _autocast(dist.device, config.dtype):
            logits = model(batch["tokens"], **{name: batch[name] for name in CHANNELS}).logits
        losses = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
        )
        scored = targets.flatten() != IGNORE
        language = batch["language"].flatten()[scored]
        loss_sum.index_add_(0, language, losses[scored].double())
        count.index_add_(0, language, torch.ones_like(language, dtype=torch.float64))
    model.train()
    loss_sum, count = _reduce(loss_sum, dist), _reduce(count, dist)
    total = float(count.sum())
    return {
        "loss": float(loss_sum.sum()) / total if total else float("nan"),
        "tokens": int(total),
        "by_language": {
            languages[index]: float(loss_sum[index] / count[index])
            for index in torch.nonzero(count).flatten().tolist()
        },
    }


def train(
    data: Path,
    out: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    progress: Progress | None = None,
) -> TrainReport:
    """Train on the prepared data at `data`, into the run folder `out` (resumed if it exists)."""
    started = time.monotonic()
    prepared = _prepared(data)
    model_config = _fit_to_data(model_config, prepared)
    dist = init_distributed(config.tensor_parallel)
    try:
        return _train(data, out, model_config, config, prepared, dist, started, progress)
    except BaseException as exc:
        # The failed run's frames hold the model, whose FSDP state holds the process groups:
        # let them go, so that shutdown can join the groups' threads.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        shutdown(dist)


def _train(data, out, model_config, config, prepared, dist, started, progress) -> TrainReport:
    effective = {
        "data": str(data.resolve()),
        "model": model_config.to_dict(),
        "train": config.to_dict(),
    }
    _check_run_folder(out, effective)
    checkpoints = out / "checkpoints"
    resume = checkpoint.latest(checkpoints)
    if resume is None and (out / "model").exists():
        raise ZenCoderError(
            f"{out} holds a finished run and no checkpoint to resume from (keep_checkpoints = 0 "
            "removes them at the end); train into a new --out folder"
        )
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", effective)
    accumulation = config.micro_batches(dist.dp_size)
    model = _start_model(model_config, config, prepared, data, dist, fresh=resume is None)
    torch.manual_seed(config.seed + dist.dp_rank)  # each data-parallel rank its own dropout
    model_config = model.config
    optimizer = build_optimizer(model, config, dist.device)
    scheduler = build_scheduler(optimizer, config)
    dataset = PackedDataset(
        data,
        "train",
        batch_size=config.micro_batch,
        seed=config.seed,
        rank=dist.dp_rank,
        world_size=dist.dp_size,
        repos_per_batch=config.repos_per_batch,
    )
    loader = PackedLoader(dataset, num_workers=config.num_workers)
    controls = Controls.for_data(data, config.shuffle, config.seed)
    counters = {"step": 0, "tokens": 0, "bad_steps": 0, "skipped": 0}
    state = checkpoint.TrainState(model, optimizer, scheduler, loader, counters, dist.rank)
    report = TrainReport(out=out, steps=config.steps, tokens=0, elapsed=0.0)
    if resume is not None:
        checkpoint.load(resume, state)
        report.resumed_from = counters["step"]
    metrics = MetricsWriter(out, dist.is_main)
    pad_id = prepared["special_tokens"]["<|pad|>"]
    languages = prepared["language_names"]
    validate = functools.partial(
        validation_loss, model, data, config, dist, pad_id, languages, controls
    )
    report.history = history_information(prepared, model_config, config)
    metrics.write("history", counters["step"], report.history)
    if not report.history["contrastive_negatives"] and model_config.contrastive_loss:
        report.warnings.append(
            "the contrastive loss has no negatives: the data holds one repository, so it stays 0"
        )
    if resume is None:
        report.initial_validation = validate()
        metrics.write("validation", 0, report.initial_validation)
    advance = progress(config.steps) if progress and dist.is_main else None
    if advance is not None and counters["step"]:
        advance(counters["step"], {})
    stream = _batches(loader)
    window_tokens, window_start, last_train = 0, time.monotonic(), None
    try:
        while counters["step"] < config.steps:
            step = counters["step"]
            parts, loads, tokens_in_step, finite = _accumulate(
                model, stream, accumulation, config, dist, pad_id, controls=controls, step=step
            )
            grad_norm = float(_clip(model, config.grad_clip))
            if not finite or not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                counters["bad_steps"] += 1
                counters["skipped"] += 1
                metrics.write("skipped", step, {"grad_norm": grad_norm, **parts})
                if counters["bad_steps"] > config.max_bad_steps:
                    saved = checkpoint.save(
                        checkpoints, state, step, config.keep_checkpoints, dist.is_main
                    )
                    raise ZenCoderError(
                        f"training diverged: {counters['bad_steps']} non-finite steps in a row "
                        f"at step {step}; lower train.lr or raise train.warmup_steps (checkpoint "
                        f"saved at {saved})"
                    )
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            model.update_expert_biases(loads)
            counters["bad_steps"] = 0
            counters["step"] = step = step + 1
            counters["tokens"] += tokens_in_step
            window_tokens += tokens_in_step
            last_train = parts["loss"]
            if step % config.log_every == 0 or step == config.steps:
                now = time.monotonic()
                rate = window_tokens / max(now - window_start, 1e-9)
                lr = scheduler.get_last_lr()[0]
                values = {**parts, "lr": lr, "grad_norm": grad_norm, "tokens_per_second": rate}
                metrics.write("train", step, {**values, "tokens": counters["tokens"]})
                window_tokens, window_start = 0, now
                if advance is not None:
                    advance(step, values)
            elif advance is not None:
                advance(step, {})
            if step % config.eval_every == 0 or step == config.steps:
                report.validation = validate()
                metrics.write("validation", step, report.validation)
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint.save(checkpoints, state, step, config.keep_checkpoints, dist.is_main)
        if report.validation is None:
            report.validation = validate()
        report.model_dir, report.hf_dir = _export(
            model, model_config, config, prepared, data, out, dist, report
        )
        if config.keep_checkpoints == 0 and dist.is_main:
            checkpoint.prune(checkpoints, 0)
    finally:
        metrics.close()
    report.tokens = counters["tokens"]
    report.skipped_steps = counters["skipped"]
    report.train_loss = last_train
    report.elapsed = time.monotonic() - started
    return report


def history_information(prepared: dict, model: ModelConfig, train: TrainConfig) -> dict:
    """What the repository techniques have to work with in this run, said once at its start:
    how many repositories the data has, whether the contrastive loss can find a negative (a
    document of another repository in its micro-batch), and the shuffled controls.

    With one repository the repository embedding is one constant vector and the contrastive
    loss, without negatives, is 0.
    """
    repositories = len(prepared["repo_names"]) - 1  # id 0 is "no repository"
    mixing = train.repos_per_batch >= 2 and train.micro_batch >= 2
    negatives = model.contrastive_loss and repositories >= 2
    return {
        "repositories": repositories,
        "contrastive_negatives": negatives,
        # "every micro-batch" with the mixing sampler; otherwise only where a shuffle or the
        # packer happens to put two repositories together.
        "negatives_in": (
            "none" if not negatives else "every micro-batch" if mixing else "some, by chance"
        ),
        "repos_per_batch": train.repos_per_batch,
        "shuffle": list(train.shuffle),
    }


def _accumulate(
    model,
    stream,
    accumulation: int,
    config: TrainConfig,
    dist,
    pad_id: int,
    *,
    controls: Controls | None = None,
    step: int = 0,
):
    """Forward and backward over the micro-batches of one optimizer step (`step`, which keys a
    control's random numbers)."""
    totals: dict[str, float] = {}
    loads = None
    tokens = 0
    finite = True
    sync = getattr(model, "set_requires_gradient_sync", None)
    for micro in range(accumulation):
        batch = next(stream)
        # The data's own mixing (before a control redraws the ids): the contrastive loss has
        # negatives only in a micro-batch of two or more.
        mixed = distinct_repositories(batch["repo"], batch["segment"]) / accumulation
        totals["repositories"] = totals.get("repositories", 0.0) + mixed
        if controls is not None:
            batch = controls.apply(
                batch, stream=TRAINING, step=step, micro=micro, rank=dist.dp_rank
            )
        batch = {name: value.to(dist.device) for name, value in batch.items()}
        targets = next_token_targets(batch["tokens"], batch["segment"], pad_id)
        if sync is not None:
            sync(config.syncs_after(micro, accumulation))
        with _autocast(dist.device, config.dtype):
            output = model(
                batch["tokens"], targets=targets, **{name: batch[name] for name in CHANNELS}
            )
        (output.loss / accumulation).backward()
        finite &= bool(torch.isfinite(output.loss.detach()))
        for name, value in {"loss": output.loss, **output.losses}.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach()) / accumulation
        step_load = torch.stack(output.load)
        loads = step_load if loads is None else loads + step_load
        tokens += batch["tokens"].numel() * dist.dp_size
    # Every rank logs and decides on the same numbers: the mean over data-parallel ranks.
    names = sorted(totals)
    shared = torch.tensor(
        [totals[name] for name in names] + [float(not finite)], dtype=torch.float64
    )
    shared = _reduce(shared.to(dist.device), dist).cpu() / dist.dp_size
    totals = dict(zip(names, shared[:-1].tolist(), strict=True))
    return totals, list(_reduce(loads, dist).unbind(0)), tokens, bool(shared[-1] == 0)


def distinct_repositories(repo: torch.Tensor, segment: torch.Tensor) -> int:
    """How many repositories (nonzero ids) a micro-batch's documents come from."""
    return len(torch.unique(repo[(repo > 0) & (segment > 0)]))


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    """Scale the gradients down to a total 2-norm of `max_norm`; return the norm before.

    Under tensor parallelism the gradients live on different meshes: the attention's on
    ("dp", "tp"), the rest on "dp" (or are plain tensors without FSDP), and torch has no norm
    over tensors of different meshes. So each mesh's gradients are measured whole, and the
    total is the 2-norm of those norms.
    """
    groups: dict[object, list[torch.Tensor]] = {}
    for parameter in model.parameters():
        if parameter.grad is not None:
            groups.setdefault(getattr(parameter.grad, "device_mesh", None), []).append(parameter)
    norms = []
    for parameters in groups.values():
        norm = torch.nn.utils.get_total_norm([parameter.grad for parameter in parameters])
        full = getattr(norm, "full_tensor", None)  # a DTensor's norm is a partial sum
        norms.append(full() if full is not None else norm)
    total = torch.stack(norms).norm()
    for parameters in groups.values():
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)


def _export(
    model,
    config: ModelConfig,
    train_config: TrainConfig,
    prepared: dict,
    data: Path,
    out: Path,
    dist,
    report,
) -> tuple[Path, Path | None]:
    """The trained model as a zen-coder folder (with the data's language and repository
    tables) and a Hugging Face one, each with the data's tokenizer; a LoRA run's adapters
    merged into the weights."""
    model_dir, hf_dir = out / "model", out / "hf"
    tables = {"languages": prepared["language_names"], "repos": prepared["repo_names"]}
    checkpoint.export_native(
        model, config, model_dir, tokenizer=data, lora=train_config.lora, **tables
    )
    if not dist.is_main:
        return model_dir, hf_dir
    native = load_model(model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tokens = read_tokenizer(data)
            token_ids = {
                "bos_token_id": tokens.bos_id,
                "eos_token_id": tokens.eos_id,
                "pad_token_id": tokens.pad_id,
            }
            hf.save_pretrained(native, hf_dir, token_ids=token_ids)
        except ZenCoderError as exc:  # a model Hugging Face's formats cannot hold
            report.warnings.append(f"no Hugging Face export: {exc}")
            hf_dir = None
    report.warnings += [str(warning.message) for warning in caught]
    if hf_dir is not None:
        for name in TOKENIZER_FILES:
            shutil.copyfile(data / name, hf_dir / name)
    return model_dir, hf_dir
