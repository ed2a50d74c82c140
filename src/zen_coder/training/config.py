"""Every setting of `zen-coder train`, and reading a run's recipe.

A recipe (configs/*.toml) is the single source of truth: its `[model]` table picks a preset and
changes fields, its `[train]` table sets the training fields below. `--set train.lr=3e-4` or
`--set model.n_layers=2` override single fields (a key without a section is a train setting).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.model.config import ModelConfig, preset
from zen_coder.settings import apply_overrides, parse_assignments

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300  # optimizer steps in the whole run
    global_batch: int = 16  # sequences per optimizer step, all data-parallel ranks together
    micro_batch: int = 8  # sequences per forward/backward on one rank
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 30
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dtype: str = "float32"  # autocast dtype; master weights stay float32
    compile: bool = False  # torch.compile each block (needs dtype bfloat16; for GPUs)
    eval_every: int = 100
    eval_batches: int = 20  # validation micro-batches, all data-parallel ranks together
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # the newest N stay once the run is done; 0: none (the model stays)
    log_every: int = 10
    max_bad_steps: int = 5  # non-finite losses or gradients in a row before the run stops
    seed: int = 0
    init_from: str = ""  # a base model: a zen-coder run folder or a Hugging Face model folder
    upcycle_experts: int = 0  # with a dense base: experts to upcycle it into (0: keep dense)
    upcycle: str = "copy"  # "copy" or "slice"
    tensor_parallel: int = 1  # tensor-parallel degree; data parallel takes the other ranks
    activation_checkpointing: str = "off"  # per block: "off", "full" or "selective"
    cpu_offload: bool = False  # FSDP2 keeps parameter, gradient, optimizer shards on the CPU
    # Reduce (FSDP: reduce-scatter) the gradients after every micro-batch instead of once per
    # step: more traffic, but FSDP then never holds a rank's whole unsharded gradients between
    # micro-batches, which no large model's GPU memory has room for.
    sync_every_micro_batch: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        positive = ("steps", "global_batch", "micro_batch", "eval_batches", "log_every")
        positive += ("eval_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ZenCoderError(f"train setting {name} must be at least 1")
        if self.keep_checkpoints < 0:
            raise ZenCoderError(
                "train setting keep_checkpoints must be 0 or more (0 keeps no checkpoint once "
                "the run has finished)"
            )
        if self.dtype not in DTYPES:
            raise ZenCoderError(f"train setting dtype must be one of {', '.join(DTYPES)}")
        if self.compile and self.dtype != "bfloat16":
            raise ZenCoderError(
                "train setting compile needs dtype bfloat16 (the compiled grouped expert "
                "products run in bfloat16); set dtype=bfloat16 or compile=false"
            )
        if self.upcycle not in ("copy", "slice"):
            raise ZenCoderError("train setting upcycle must be copy or slice")
        if self.global_batch % self.micro_batch:
            raise ZenCoderError(
                "train setting global_batch must be a multiple of micro_batch "
                f"(got {self.global_batch} and {self.micro_batch})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def micro_batches(self, dp_size: int) -> int:
        """How many micro-batches each of `dp_size` data-parallel ranks runs per step."""
        per_step = self.micro_batch * dp_size
        if self.global_batch % per_step:
            raise ZenCoderError(
                f"train setting global_batch ({self.global_batch}) must be a multiple of "
                f"micro_batch x data-parallel ranks ({self.micro_batch} x {dp_size})"
            )
        return self.global_batch // per_step

    def syncs_after(self, micro: int, micro_batches: int) -> bool:
        """Whether gradients are reduced after micro-batch `micro` (from 0) of a step."""
        return self.sync_every_micro_batch or micro == micro_batches - 1


def load_run_config(
    recipe: Path | None, assignments: list[str] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """The recipe's model and training settings, then `--set section.key=value` overrides."""
    document = read_toml(recipe, "recipe") if recipe is not None else {}
    model_table = dict(document.get("model", {}))
    train_table = dict(document.get("train", {}))
    overrides: dict[str, dict[str, str]] = {"model": {}, "train": {}}
    for key, value in parse_assignments(assignments or []).items():
        section, _, name = key.rpartition(".")
        section = section or "train"
        if section not in overrides:
            raise ZenCoderError(f"--set {key}: the section must be model or train")
        overrides[section][name] = value
    name = str(overrides["model"].pop("preset", model_table.pop("preset", "tiny")))
    model = apply_overrides(preset(name), "model", model_table)
    model = apply_overrides(model, "model", overrides["model"])
    train = apply_overrides(TrainConfig(), "train", train_table)
    train = apply_overrides(train, "train", overrides["train"])
    return model, train
