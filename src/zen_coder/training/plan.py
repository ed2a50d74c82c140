"""`zen-coder plan`: the memory one rank needs to train a recipe, before any GPU is rented.

The plan is not a formula. In this one process, a fake process group of the target size (torch's
`FakeStore` with the "fake" backend, whose collectives do nothing) stands in for the cluster; the
real model is built under `FakeTensorMode` (tensors with shapes and no storage, meta tensors
underneath) and handed to the real `parallelize`, so each parameter is split exactly as the run
will split it; then the real forward and backward of micro-batches of the recipe's shape and the
real AdamW step run on fake tensors while torch's memory tracker (`FSDPMemTracker`, or
`MemTracker` without FSDP) follows every tensor's storage: sharded and gathered parameters,
gradients, optimizer state, activations saved for backward and the temporaries of each
operation. The plan reports the largest total seen, broken down by what was alive at that moment.

Rank 0 speaks for every rank. FSDP2 pads every rank's shard of a parameter to the size of the
first (largest) one, so every rank allocates what rank 0 does; tensor parallelism splits heads
(and expert widths) evenly; and every rank runs the same shapes: micro_batch sequences of the
context length, and a dropless mixture of experts whose grouped products are padded to a size
that depends only on the token count, never on the routing.

What the fake run counts as a GPU would:
- Attention. FlexAttention runs as its fused kernel (its fake implementation allocates the output
  and the log-sum-exp, never the T x T scores), as the compiled kernel does on a GPU. SDPA runs
  the kernel the CPU picks for these inputs, a flash kernel that saves the output and the
  log-sum-exp too; its materialized document mask [B, 1, T, T] is counted, as a GPU holds it.
- The contrastive loss selects documents by value (`torch.unique`), which fake tensors cannot
  run: it runs as `ZenCoder.no_contrast`, which takes the same projection, so its gradient and
  optimizer state are counted; the pooled document states it leaves out are [documents, D].
- Float32 grouped expert products: their fake kernel accepts bfloat16 only; their output is
  allocated from the shapes (the products save nothing beyond their inputs).
- What it cannot see: the CUDA context, NCCL's buffers, kernel workspaces and the caching
  allocator's fragmentation. A plan fits when its peak is within USABLE of the card.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.model import model as model_module
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder, next_token_targets
from zen_coder.settings import parse_assignments
from zen_coder.training.config import TrainConfig, load_run_config
from zen_coder.training.lora import apply_lora
from zen_coder.training.optim import build_optimizer
from zen_coder.training.parallelize import Distributed
from zen_coder.training.trainer import low_precision, parallelize_as_recipe

# The share of a GPU's memory a plan may fill: the rest is for the CUDA context (about 0.5 GB),
# NCCL's buffers, kernel workspaces and the caching allocator's fragmentation.
USABLE = 0.9
# Options of `parallelize` that the recipe sets (TrainConfig fields of the same name), passed
# where `parallelize` takes them, so the plan applies every option the run will.
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# The tracker's categories (FSDPMemTracker's and MemTracker's names) -> the plan's rows.
_ROWS = {
    "Sharded Param": "parameters",
    "Parameter": "parameters",
    "Unsharded Param": "gathered parameters",
    "All Gather": "gathered parameters",
    "Sharded Grad": "gradients",
    "Unsharded Grad": "gradients",
    "Reduce Scatter": "gradients",
    "Gradient": "gradients",
    "OptState": "optimizer state",
    "Optstate": "optimizer state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Inputs": "temporaries",
    "Buffer": "temporaries",
    "Other": "temporaries",
}
ROWS = (
    "parameters",
    "gathered parameters",
    "gradients",
    "optimizer state",
    "activations",
    "temporaries",
)
# With CPU offload, FSDP2 keeps these on the host; the rest lives on the GPU.
_OFFLOADED = {"Sharded Param", "Sharded Grad", "OptState"}


@dataclass(frozen=True)
class Cluster:
    """What the plan is for: how many GPUs, each with how many bytes."""

    gpus: int
    gpu_memory: int
    gpus_per_host: int = 8
    device: str = "cuda"  # "cuda": fused AdamW, as on GPUs; "cpu": the CPU's unfused AdamW


@dataclass
class MemoryPlan:
    """Bytes on one rank (rank 0, whose share every rank matches)."""

    model: ModelConfig
    train: TrainConfig
    cluster: Cluster
    dp_size: int
    tp_size: int
    micro_batches: int  # per optimizer step, on each data-parallel rank
    parameters: int  # the rank's shards of the weights, held throughout
    gradients: int  # the rank's shards of the gradients once reduced
    optimizer: int  # AdamW's state for the rank's shards
    peak: dict[str, int]  # ROWS -> bytes on the device, at the peak of a training step
    host: int  # bytes offloaded to the host (CPU offload), per rank

    @property
    def total(self) -> int:
        return sum(self.peak.values())

    @property
    def usable(self) -> int:
        return int(self.cluster.gpu_memory * USABLE)

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    @property
    def host_per_host(self) -> int:
        """Offloaded bytes of all the ranks that share one host."""
        return self.host * min(self.cluster.gpus, self.cluster.gpus_per_host)

    @property
    def settings(self) -> str:
        """The settings that decide the memory, in a few words."""
        train = self.train
        words = [
            f"tensor parallel {self.tp_size} x data parallel {self.dp_size}",
            f"micro-batch {train.micro_batch} x {self.model.context_length:,} tokens",
            f"{self.micro_batches} micro-batch{'es' if self.micro_batches > 1 else ''} per step",
            train.dtype,
        ]
        if train.activation_checkpointing != "off":
            words.append(f"{train.activation_checkpointing} activation checkpointing")
        if train.cpu_offload:
            words.append("CPU offload")
        if train.lora.enabled:
            words.append(f"LoRA rank {train.lora.rank}")
        if train.sync_every_micro_batch and self.micro_batches > 1:
            words.append("gradients reduced every micro-batch")
        return ", ".join(words)


def markdown_table(rows: list[tuple[str, MemoryPlan]]) -> str:
    """Plans as a Markdown table, one row per (run, plan): each row at the peak of a step, in GB
    per GPU (the columns add up to the peak), and the host memory CPU offload takes."""
    columns = ["run", "GPUs", "settings", *ROWS, "peak per GPU", "fits", "host, offload"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run, plan in rows:
        cells = [run, f"{plan.cluster.gpus} x {memory_size(plan.cluster.gpu_memory)}"]
        cells += [plan.settings, *(gigabytes(plan.peak[row]) for row in ROWS)]
        cells += [f"**{gigabytes(plan.total)}**", "yes" if plan.fits else "no"]
        cells.append(f"{gigabytes(plan.host_per_host)} per host" if plan.host else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gigabytes(size: int) -> str:
    return f"{size / 1e9:,.1f}"


def memory_size(size: int) -> str:
    """A device's memory as it was likely given: whole GiB in GiB, else GB."""
    return f"{size // 2**30} GiB" if size % 2**30 == 0 else f"{gigabytes(size)} GB"


def parse_size(text: str, option: str = "--gpu-memory") -> int:
    """Bytes from "80GB", "141 GiB" or "512MB" (decimal and binary units, case-insensitive)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ZenCoderError(
            f"{option} {text}: give a size with a unit of B, KB, MB, GB, TB or KiB, MiB, GiB, "
            "TiB, such as 80GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def planned_configs(
    recipe: Path | None, assignments: list[str] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """The recipe's settings as `zen-coder train` will see them: the model fitted to the data
    that `zen-coder prepare --config RECIPE` writes (its context length and vocabulary), unless
    `--set model.context_length=N` or `model.vocab_size=N` says otherwise."""
    model, train = load_run_config(recipe, assignments)
    data = read_toml(recipe, "recipe").get("prepare", {}) if recipe is not None else {}
    overridden = parse_assignments(assignments or [])
    fitted = {
        name: data[name]
        for name in ("context_length", "vocab_size")
        if name in data and f"model.{name}" not in overridden
    }
    return dataclasses.replace(model, **fitted), train


def plan(model_config: ModelConfig, train: TrainConfig, cluster: Cluster) -> MemoryPlan:
    """The memory each rank needs to train `model_config` with `train` on `cluster`."""
    tp = train.tensor_parallel
    if cluster.gpus < 1 or tp < 1 or cluster.gpus % tp:
        raise ZenCoderError(
            f"--gpus {cluster.gpus} must be a multiple of train.tensor_parallel ({tp}); "
            f"use --gpus {max(tp, cluster.gpus - cluster.gpus % tp)} or "
            f"--set train.tensor_parallel=1"
        )
    micro_batches = train.micro_batches(cluster.gpus // tp)
    fake = FakeTensorMode()
    # Torch warns about the stand-ins (random numbers on a CPU mesh, FSDP's hooks on fake
    # outputs): nothing a user of the plan can act on.
    with warnings.catch_warnings(), _fake_ranks(cluster.gpus, tp) as dist:
        warnings.simplefilter("ignore")
        model = _parallel_model(model_config, train, dist, fake)
        with fake:
            parameters = local_bytes(model.parameters())
            gradients = local_bytes(p for p in model.parameters() if p.requires_grad)
            optimizer = build_optimizer(model, train, torch.device(cluster.device))
            _create_optimizer_state(model, optimizer)
            tracker = _tracker(model, optimizer, train.cpu_offload)
            with tracker, _GroupedShapes(), _fused_flex_attention():
                _step(model, optimizer, model_config, train, micro_batches, tracker.reset_mod_stats)
            state = local_bytes(
                value for entry in optimizer.state.values() for value in entry.values()
            )
    return MemoryPlan(
        model=model_config,
        train=train,
        cluster=cluster,
        dp_size=cluster.gpus // tp,
        tp_size=tp,
        micro_batches=micro_batches,
        parameters=parameters,
        gradients=gradients,
        optimizer=state,
        peak=tracker.device_peak,
        host=tracker.host_peak,
    )


@contextmanager
def _fake_ranks(gpus: int, tensor_parallel: int) -> Iterator[Distributed]:
    """Rank 0 of `gpus` ranks, in this process: a fake process group and the run's mesh."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if torch_dist.is_initialized():
        raise ZenCoderError("plan needs a process of its own: this one already joined a run")
    if gpus == 1:  # a single process creates no group, as init_distributed does
        yield Distributed(0, 1, 0, 0, 1, 1, torch.device("cpu"), None)
        return
    torch_dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=gpus)
    try:
        dp = gpus // tensor_parallel
        mesh = init_device_mesh("cpu", (dp, tensor_parallel), mesh_dim_names=("dp", "tp"))
        yield Distributed(0, gpus, 0, 0, dp, tensor_parallel, torch.device("cpu"), mesh)
    finally:
        torch_dist.destroy_process_group()


def _parallel_model(
    config: ModelConfig, train: TrainConfig, dist: Distributed, fake: FakeTensorMode
) -> ZenCoder:
    """The run's model, split as the run splits it; its tensors are fake (built under
    FakeTensorMode, which allocates nothing, as the meta device would). Parallelized outside
    the mode: operations on fake tensors stay fake, while the device mesh's own bookkeeping
    (real tensors of rank numbers) runs for real."""
    with fake, dist.device:
        model = apply_lora(ZenCoder(config), train.lora, low_precision(train))
    model = parallelize_as_recipe(model, dataclasses.replace(train, compile=False), dist)
    # Documents are chosen by value in the contrastive loss, which fake tensors cannot run; its
    # stand-in takes the same projection (see the module's docstring).
    model.contrastive = lambda hidden, repo, segment: model.no_contrast(hidden)
    return model


def local_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of this rank's share of each tensor (a DTensor's local shard)."""
    total = 0
    for tensor in tensors:
        if isinstance(tensor, Tensor):
            local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
            total += local.numel() * local.element_size()
    return total


def synthetic_batch(config: ModelConfig, batch: int, length: int, device) -> dict[str, Tensor]:
    """A micro-batch shaped as prepared data: two documents per sequence, every side channel."""
    shape = (batch, length)
    segment = torch.ones(shape, dtype=torch.long, device=device)
    segment[:, length // 2 :] = 2
    rows = torch.arange(batch, device=device)[:, None]
    return {
        "tokens": torch.randint(0, config.vocab_size, shape, device=device),
        "segment": segment,
        "repo": (rows % config.n_repos).expand(shape).contiguous(),
        "language": (rows % config.n_languages).expand(shape).contiguous(),
        "time": torch.arange(length, device=device).expand(shape).contiguous(),
    }


def _create_optimizer_state(model, optimizer) -> None:
    """AdamW creates its state at its first step: take one on zero gradients, so that the
    tracked step starts as every step after the first does."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _step(
    model,
    optimizer,
    config: ModelConfig,
    train: TrainConfig,
    micro_batches: int,
    before_forward: Callable[[], None],
) -> None:
    """One optimizer step as the trainer runs it (`trainer._accumulate`, then AdamW). The
    micro-batches after the second repeat its memory (the gradients accumulated so far are
    there either way), so at most two run; gradients are reduced after the last one only."""
    sync = getattr(model, "set_requires_gradient_sync", None)
    runs = min(micro_batches, 2)
    output = None  # the trainer holds each micro-batch's output until the next one's is made
    for micro in range(runs):
        batch = synthetic_batch(config, train.micro_batch, config.context_length, "cpu")
        targets = next_token_targets(batch["tokens"], batch["segment"])
        if sync is not None:
            sync(train.syncs_after(micro, runs))
        before_forward()
        with _autocast(train.dtype):
            output = model(batch.pop("tokens"), targets=targets, **batch)
        (output.loss / micro_batches).backward()
    del output
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")


@contextmanager
def _fused_flex_attention() -> Iterator[None]:
    """FlexAttention as the GPU runs it. Torch's `flex_attention` refuses gradients on a CPU
    (where the fake tensors live), so the model's attention calls the operator beneath it,
    the higher-order op that the compiled GPU kernel implements: its fake implementation
    allocates the output and the log-sum-exp, and its autograd saves what the kernel's does
    (queries, keys, values, output, log-sum-exp and the block mask)."""
    from torch._higher_order_ops.flex_attention import flex_attention as operator
    from torch.nn.attention.flex_attention import _apply_kernel_options, _identity

    def attention(query, key, value, *, block_mask, scale, enable_gqa):
        options = _apply_kernel_options(query, key, value, False, None, None)
        return operator(query, key, value, _identity, block_mask.as_tuple(), scale, options)[0]

    saved = model_module._flex_attention
    model_module._flex_attention = lambda: attention
    try:
        yield
    finally:
        model_module._flex_attention = saved


class _GroupedShapes(TorchDispatchMode):
    """Float32 grouped products, whose fake kernel accepts bfloat16 only: their output is
    allocated from the shapes (2-D x 3-D: rows x out; 2-D x 2-D, a weight gradient: experts x
    rows x columns). Every other operation runs as it is."""

    supports_higher_order_operators = True  # FlexAttention's operator passes through

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._grouped_mm.default and args[0].dtype == torch.float32:
            left, right = args[0], args[1]
            offsets = kwargs.get("offs", args[2] if len(args) > 2 else None)
            if left.dim() == 2 and right.dim() == 3:
                return left.new_empty(left.shape[0], right.shape[-1])
            if left.dim() == 2 and right.dim() == 2:
                return left.new_empty(offsets.shape[0], left.shape[0], right.shape[1])
        return func(*args, **kwargs)


def _tracker(model, optimizer, offload: bool):
    """Torch's tracker of the model and optimizer, with the peak kept apart for the device and
    the host (FSDP2's offload keeps sharded parameters, gradients and optimizer state there)."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType
    from torch.distributed._tools.mem_tracker import MemTracker

    base = FSDPMemTracker if isinstance(model, FSDPModule) else MemTracker
    offloaded = _OFFLOADED if offload else set()

    class Tracker(base):
        supports_higher_order_operators = True  # FlexAttention's operator is tracked too
        device_peak: dict[str, int]  # ROWS -> bytes, at the largest total on the device
        host_peak: int

        def _update_peak_stats(self, peak_state) -> None:
            """After every operation: the totals on the device and on the host. (Replaces
            torch's per-module peaks, whose cost grows with the number of modules.)"""
            for snapshot in self._curr_mem_snap.values():
                rows = dict.fromkeys(ROWS, 0)
                host = 0
                for category, size in snapshot.items():
                    name = str(category.value) if hasattr(category, "value") else str(category)
                    if name in offloaded:
                        host += size
                    elif name in _ROWS:
                        rows[_ROWS[name]] += size
                if sum(rows.values()) > sum(self.device_peak.values()):
                    self.device_peak = rows
                self.host_peak = max(self.host_peak, host)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            """Torch's, but without gradient hooks on a module that holds frozen parameters
            (LoRA's base), which refuse them; such a module's trainable parameters' gradients
            are then counted as temporaries, still in the total."""
            trainable = all(parameter.requires_grad for parameter in module.parameters())
            return super()._track_module_params_and_buffers(
                module, install_grad_hooks=install_grad_hooks and trainable
            )

        def _fsdp_param_group_post_backward(self, module, original):
            """Torch's wrapper, then: gradients FSDP keeps unsharded between micro-batches (no
            sync until the last) are gradients, not the temporaries torch files them as."""
            wrapped = super()._fsdp_param_group_post_backward(module, original)

            def post_backward(*args, **kwargs):
                wrapped(*args, **kwargs)
                group = module._get_fsdp_state()._fsdp_param_group
                for fsdp_param in group.fsdp_params if group is not None else ():
                    kept = fsdp_param.unsharded_accumulated_grad
                    if kept is not None:
                        self._update_and_maybe_create_winfos(kept, _FSDPRefType.UNSHARDED_GRAD)

            return post_backward

    tracker = Tracker(model, optimizer) if base is FSDPMemTracker else Tracker()
    tracker.device_peak, tracker.host_peak = dict.fromkeys(ROWS, 0), 0
    if base is MemTracker:
        tracker.track_external(model, optimizer)
    return tracker
