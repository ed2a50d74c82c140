"""Every setting of `zen-coder train`, and reading a run's recipe.

A recipe (configs/*.toml) is the single source of truth: its `[model]` table picks a preset and
changes fields, its `[train]` table sets the training fields below and its `[train.lora]` table
the LoRA fields. `--set train.lr=3e-4`, `--set model.n_layers=2` or `--set train.lora.rank=16`
override single fields (a key without a section is a train setting).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.model.config import ModelConfig, preset
from zen_coder.settings import apply_overrides, parse_assignments

DTYPES = ("float32", "bfloat16")
ACTIVATION_CHECKPOINTING = ("off", "full", "selective")
LORA_TARGETS = ("q", "k", "v", "o", "w1", "w2", "w3")  # attention and expert projections
# What else trains beside the adapters (`zen_coder.training.lora` says which parameters each is).
LORA_TRAINABLE = ("router", "techniques", "norms", "embeddings")
SECTIONS = ("model", "train", "train.lora")
# The side channels a shuffled control can destroy (`zen_coder.training.controls`).
CONTROLS = ("repo", "time", "language")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on a frozen base: W + (alpha / rank) B A on each target projection.

    Rank 0 (the default) is no LoRA: the whole model trains. `trainable` names what trains
    beside the adapters: the routers and the technique tables by default, since a fine-tuning
    run starts them new (an upcycled router, the data's repository and language rows, temporal
    coefficients at zero) and they are small.
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapters' input only
    targets: tuple[str, ...] = LORA_TARGETS
    trainable: tuple[str, ...] = ("router", "techniques")

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ZenCoderError("train.lora setting rank must be 0 (no LoRA) or more")
        if self.alpha <= 0:
            raise ZenCoderError("train.lora setting alpha must be more than 0")
        if not 0 <= self.dropout < 1:
            raise ZenCoderError("train.lora setting dropout must be at least 0 and below 1")
        for name, value, known in (
            ("targets", self.targets, LORA_TARGETS),
            ("trainable", self.trainable, LORA_TRAINABLE),
        ):
            unknown = [item for item in value if item not in known]
            if unknown:
                raise ZenCoderError(
                    f"train.lora setting {name} has unknown {unknown[0]!r}; choose among "
                    f"{', '.join(known)}"
                )
        if self.enabled and not self.targets:
            raise ZenCoderError(
                f"train.lora setting targets is empty; name some of {', '.join(LORA_TARGETS)}"
            )

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        """The adapters' factor alpha / rank: the update's size does not change with the rank."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {**fields, "targets": list(self.targets), "trainable": list(self.trainable)}


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
    # Repositories in each micro-batch (`zen_coder.data.loader.mixed_order`): the contrastive
    # loss needs documents of two to have a negative. 0 or 1: a plain shuffle.
    repos_per_batch: int = 2
    # Shuffled controls: channels among CONTROLS trained and validated with their information
    # destroyed and their distribution kept, to tell a technique's information from its
    # parameters (`zen_coder.training.controls`).
    shuffle: tuple[str, ...] = ()
    lora: LoraConfig = field(default_factory=LoraConfig)  # the [train.lora] table

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
        if self.repos_per_batch < 0:
            raise ZenCoderError(
                "train setting repos_per_batch must be 0 or more (0 or 1: a plain shuffle)"
            )
        unknown = [name for name in self.shuffle if name not in CONTROLS]
        if unknown:
            raise ZenCoderError(
                f"train setting shuffle has unknown {unknown[0]!r}; choose among "
                f"{', '.join(CONTROLS)}"
            )
        if self.dtype not in DTYPES:
            raise ZenCoderError(f"train setting dtype must be one of {', '.join(DTYPES)}")
        if self.compile and self.dtype != "bfloat16":
            raise ZenCoderError(
                "train setting compile needs dtype bfloat16 (the compiled grouped expert "
                "products run in bfloat16); set dtype=bfloat16 or compile=false"
            )
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise ZenCoderError(
                "train setting activation_checkpointing must be one of "
                + ", ".join(ACTIVATION_CHECKPOINTING)
            )
        if self.upcycle not in ("copy", "slice"):
            raise ZenCoderError("train setting upcycle must be copy or slice")
        if self.global_batch % self.micro_batch:
            raise ZenCoderError(
                "train setting global_batch must be a multiple of micro_batch "
                f"(got {self.global_batch} and {self.micro_batch})"
            )
        if self.lora.enabled and not self.init_from:
            raise ZenCoderError(
                "train.lora adapts a base model: set train.init_from, or train.lora.rank=0 to "
                "train the whole model"
            )
        if self.lora.enabled and self.tensor_parallel > 1:
            raise ZenCoderError(
                "train.lora does not work with tensor_parallel > 1 (the adapters are not split "
                "across tensor-parallel ranks); set train.tensor_parallel=1 (data parallelism "
                "shards a LoRA run)"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON writes them (lists, not tuples), so a run folder's saved
        settings compare equal to the same settings read again."""
        fields = {**dataclasses.asdict(self), "shuffle": list(self.shuffle)}
        return {**fields, "lora": self.lora.to_dict()}

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
    lora_table = train_table.pop("lora", {})
    if not isinstance(lora_table, dict):
        raise ZenCoderError(f"{recipe}: lora must be a table of its own, [train.lora]")
    overrides: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
    for key, value in parse_assignments(assignments or []).items():
        section, _, name = key.rpartition(".")
        section = section or "train"
        if section not in overrides:
            raise ZenCoderError(f"--set {key}: the section must be model, train or train.lora")
        overrides[section][name] = value
    name = str(overrides["model"].pop("preset", model_table.pop("preset", "tiny")))
    model = apply_overrides(preset(name), "model", model_table)
    model = apply_overrides(model, "model", overrides["model"])
    lora = apply_overrides(LoraConfig(), "train.lora", lora_table)
    lora = apply_overrides(lora, "train.lora", overrides["train.lora"])
    train = apply_overrides(TrainConfig(), "train", train_table)
    train = apply_overrides(train, "train", overrides["train"])
    return model, dataclasses.replace(train, lora=lora)
