"""Parallelism applied to the model from outside: the model code knows almost nothing of it
(the experts multiply by their weights' local slices, which is the same when they are whole).

The ranks form a 2-D mesh ("dp", "tp"). Tensor-parallel ranks are the inner dimension, so they
are neighbours (the same node on a GPU cluster): they exchange activations twice per block,
while data-parallel ranks exchange only parameters and gradients.

Tensor parallelism (Megatron style) splits each block's attention by heads: q, k, v and the
temporal-attention coefficients are split by output rows (column-wise), so each rank computes
its own heads; o is split by input columns (row-wise) and its partial outputs are all-reduced.
Qwen3's q/k norms act per head, so each rank applies the whole (replicated) weight to its own
heads, and the weight's gradient, a sum over every head, is all-reduced.
Each block's experts are split by expert width the same way: every rank holds a slice of every
expert (w1 and w3 by rows, w2 by columns), computes that slice for all routed rows, and the
partial outputs are all-reduced; the router stays whole, so every rank routes alike. The token
embedding is split by vocabulary rows (the partial lookups all-reduced), the output head by
vocabulary (the logits gathered whole, so the losses and generation see plain logits), the
contrastive projection by output columns. Then each block may be checkpointed (its
activations recomputed in backward) and compiled (`torch.compile`): one graph per block,
shared by all blocks, fuses the small elementwise kernels (norms, rotary embedding, casts,
SwiGLU) and cuts kernel launches. Last, FSDP2 shards every parameter over "dp", one block at a
time, so a block's parameters are gathered just before it runs and freed after; with CPU
offload the shards live in host memory.

The current plan's limits: the activations between blocks are whole on every tensor-parallel
rank (no sequence parallelism), so the norms, the router and the routing of tokens run on every
tp rank on the same tokens, and the experts' all-reduce carries every routed row, k per token.
Each rank holds the whole logits rather than computing the loss on its vocabulary slice (loss
parallelism), which keeps the model's loss code plain. Expert parallelism, which would give
each rank whole experts of its own and exchange tokens all-to-all, is future work.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import (
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from zen_coder.errors import ZenCoderError
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import Experts, ZenCoder
from zen_coder.training.config import ACTIVATION_CHECKPOINTING


@dataclass
class Distributed:
    """Where this process stands among the ranks of a run."""

    rank: int
    world_size: int
    local_rank: int
    dp_rank: int  # which share of the global batch this rank reads
    dp_size: int
    tp_size: int
    device: torch.device
    mesh: DeviceMesh | None  # 2-D ("dp", "tp") when world_size > 1, else None

    @property
    def is_main(self) -> bool:
        """The one rank that logs and writes metrics, so they are written once."""
        return self.rank == 0


def init_distributed(tensor_parallel: int = 1) -> Distributed:
    """Join the run that torchrun started (RANK, WORLD_SIZE, LOCAL_RANK), or run alone.

    A single process creates no process group, so plain `python` runs need no rendezvous.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if tensor_parallel < 1 or world_size % tensor_parallel:
        raise ZenCoderError(
            f"tensor_parallel={tensor_parallel} must be at least 1 and divide the {world_size} "
            "ranks of this run"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dp_size = world_size // tensor_parallel
    mesh, dp_rank = None, 0
    if world_size > 1:
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        mesh = init_device_mesh(
            device.type, (dp_size, tensor_parallel), mesh_dim_names=("dp", "tp")
        )
        dp_rank = mesh["dp"].get_local_rank()
    return Distributed(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        dp_rank=dp_rank,
        dp_size=dp_size,
        tp_size=tensor_parallel,
        device=device,
        mesh=mesh,
    )


def parallelize(
    model: ZenCoder,
    dist: Distributed,
    param_dtype: torch.dtype | None = None,
    compile: bool = False,
    activation_checkpointing: str = "off",
    cpu_offload: bool = False,
) -> ZenCoder:
    """Apply tensor parallelism (tp_size > 1), activation checkpointing, compile each block
    (`compile`), then FSDP2 over "dp" (dp_size > 1), in place: torchtitan's order.

    Every rank must hold the same full weights (build the model from the same seed on
    dist.device), or none yet: a model built on the meta device is parallelized as it is, then
    given memory by `materialize` and filled, each rank in its own shards. Tensor parallelism
    comes first because FSDP2 shards the tensor-parallel shards further, along "dp";
    checkpointing comes before compiling so that each block compiles with its recomputation in
    the graph.

    `param_dtype` (bfloat16) is the dtype FSDP gathers parameters in for compute; gradients are
    still reduced in float32 and the sharded master weights stay float32. It applies only
    where FSDP does (dp_size > 1), and the forward still wants autocast: the rotary embedding
    promotes bfloat16 queries and keys to float32, and attention rejects mixed dtypes.

    `activation_checkpointing` ("off", "full", "selective") trades compute for activation
    memory per block (see `checkpoint_blocks`). `cpu_offload` keeps FSDP's parameter, gradient
    and optimizer shards in CPU memory (the optimizer steps on the CPU); it needs FSDP, so
    data-parallel ranks.
    """
    _check(model.config, dist, activation_checkpointing, cpu_offload)
    if dist.tp_size > 1:
        _tensor_parallel(model, dist.mesh["tp"])
    if activation_checkpointing != "off":
        checkpoint_blocks(model, activation_checkpointing)
    if compile:
        compile_blocks(model)
    if dist.dp_size > 1:
        _fully_shard(model, dist, param_dtype, cpu_offload)
    return model


def materialize(model: ZenCoder, dist: Distributed, cpu_offload: bool = False) -> None:
    """Give a model built on the meta device, and parallelized, its memory on this rank: its
    own shards only. The parameters and the persistent buffers (expert biases) then hold
    whatever memory was there, until loaded or reset; the non-persistent buffers (rotary and
    temporal frequencies), which no checkpoint holds, are computed.

    Under CPU offload FSDP keeps the parameter shards in host memory and refuses them on the
    GPU, so they are materialized there, while the buffers go to the device, where the forward
    reads them."""
    model.to_empty(device="cpu" if cpu_offload else dist.device)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.to(dist.device))
    model.init_non_persistent_buffers()


def _check(
    config: ModelConfig, dist: Distributed, activation_checkpointing: str, cpu_offload: bool
) -> None:
    for name in ("n_heads", "n_kv_heads", "expert_dim"):
        size = getattr(config, name)
        if size % dist.tp_size:
            raise ZenCoderError(f"tensor_parallel={dist.tp_size} must divide model {name}={size}")
    if activation_checkpointing not in ACTIVATION_CHECKPOINTING:
        raise ZenCoderError(
            f"activation_checkpointing={activation_checkpointing!r} must be one of "
            + ", ".join(ACTIVATION_CHECKPOINTING)
        )
    if cpu_offload and dist.dp_size < 2:
        raise ZenCoderError(
            "cpu_offload needs FSDP, which needs 2 or more data-parallel ranks (processes / "
            f"tensor_parallel; this run has {dist.dp_size}): run more processes under torchrun "
            "or set cpu_offload=false"
        )


def _tensor_parallel(model: ZenCoder, mesh: DeviceMesh) -> None:
    """Split the model over the "tp" ranks: every block's attention by heads and its experts
    by expert width; the token embedding by vocabulary rows, the output head by vocabulary
    columns (its logits gathered whole), the contrastive projection by output columns. The
    norms, the router, the language and repository tables stay whole on every rank: they are
    small, and the router must choose the same experts on every rank."""
    attention = {
        "q": ColwiseParallel(),
        "k": ColwiseParallel(),
        "v": ColwiseParallel(),
        "o": RowwiseParallel(),
    }
    if model.config.temporal_attention:
        # Its rows are grouped by head like q's, so a column-wise split gives each rank the
        # coefficients of its own heads.
        attention["temporal"] = ColwiseParallel()
    if model.config.qk_norm:
        # Each rank normalizes its own heads (dimension 2 of [B, T, heads, Hd]) with the whole
        # weight, replicated; its gradient sums over every head, so it is all-reduced.
        attention["q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        attention["k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    for block in model.blocks:
        parallelize_module(block.attention, mesh, attention)
        _split_expert_width(block.moe.experts, mesh)
    # Token ids are the same on every rank; each rank looks up the rows it holds (zeros for
    # the others) and the partial embeddings are summed. The head computes the logits of its
    # own vocabulary slice, gathered whole: the losses and generation see plain logits.
    root = {
        "embed": RowwiseParallel(input_layouts=Replicate()),
        "head": ColwiseParallel(output_layouts=Replicate()),
    }
    if model.projection is not None:
        root["projection"] = ColwiseParallel(output_layouts=Replicate())
    tied = model.head.weight is model.embed.weight
    parallelize_module(model, mesh, root)
    if tied:
        # Both are split by vocabulary rows, so one DTensor serves both again.
        model.head.weight = model.embed.weight


def _split_expert_width(experts: Experts, mesh: DeviceMesh) -> None:
    """Megatron's split of a feed-forward layer, for every expert at once: each rank holds a
    slice of every expert's width (w1 and w3 by rows, dim 1; w2 by columns, dim 2), computes
    that slice for all of the routed rows, and the partial outputs are summed.

    The routed rows enter as they are (the same on every rank) and their gradient, partial on
    each rank, is summed in backward; the partial outputs are summed in forward and their
    gradient, the same on every rank, passes back as it is. `Experts.forward` multiplies by
    the weights' local slices, because the grouped products take plain tensors."""

    def partition(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        if module is experts:
            for weight, dim in (("w1", 1), ("w3", 1), ("w2", 2)):
                tensor = getattr(module, weight)
                sharded = distribute_tensor(tensor, mesh, [Shard(dim)])
                module.register_parameter(weight, nn.Parameter(sharded, tensor.requires_grad))

    distribute_module(experts, mesh, partition, _routed_rows, _summed_outputs)


def _routed_rows(module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
    """Forward: the rows as they are. Backward: sum the rows' partial gradients."""
    routed, ends = inputs
    shared = DTensor.from_local(routed, mesh, [Replicate()], run_check=False)
    return shared.to_local(grad_placements=[Partial()]), ends


def _summed_outputs(module: nn.Module, output: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Forward: sum the partial outputs of the ranks. Backward: the gradient as it is."""
    pending = DTensor.from_local(output, mesh, [Partial()], run_check=False)
    return pending.redistribute(placements=[Replicate()]).to_local()


def checkpoint_blocks(model: ZenCoder, mode: str) -> None:
    """Recompute each block's activations in backward instead of keeping them from forward.

    "full" keeps only each block's input: the least memory, at the cost of a second forward
    of every block. "selective" is torchtitan's op-level choice: it keeps the outputs of the
    matrix products, attention and collectives (the costly operations, and the collectives
    would be a second exchange) and recomputes the rest, the norms, rotary embedding, SwiGLU
    and casts, which cost little to recompute but hold most of the activations. The other
    usual choice, every other block checkpointed whole, recomputes the products of half the
    blocks to keep half of the activations; this recomputes no product (on the tiny test
    model it keeps 40% of the blocks' activations).

    The block's `forward` is wrapped in place rather than the block in a wrapper module
    (torch's `checkpoint_wrapper`): parameter names stay as they are, and with them
    checkpoints, exports and anything that finds a parameter by name.
    """
    checkpointed = _selective if mode == "selective" else _full
    for block in model.blocks:
        block.forward = partial(checkpointed, block.forward)


# Two functions rather than one with a context_fn argument: torch.compile traces checkpoint
# with a selective policy, or with no context_fn at all, but not with its default one passed.
def _full(forward: Callable, *args: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False)


def _selective(forward: Callable, *args: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, context_fn=_keep_products)


def _saved_ops() -> frozenset:
    """The operations whose outputs selective checkpointing keeps (those present in this
    torch build)."""
    aten, functional = torch.ops.aten, torch.ops._c10d_functional
    names = [
        (aten, "mm"),
        (aten, "addmm"),
        (aten, "bmm"),
        (aten, "_grouped_mm"),
        (aten, "_scaled_dot_product_flash_attention"),
        (aten, "_scaled_dot_product_flash_attention_for_cpu"),
        (aten, "_scaled_dot_product_efficient_attention"),
        (aten, "_scaled_dot_product_cudnn_attention"),
        (functional, "all_reduce"),
        (functional, "reduce_scatter_tensor"),
    ]
    ops = {
        getattr(namespace, name).default for namespace, name in names if hasattr(namespace, name)
    }
    flex = getattr(torch.ops.higher_order, "flex_attention", None)
    return frozenset(ops | ({flex} if flex is not None else set()))


SAVED_OPS = _saved_ops()


def _save_products(context: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _keep_products() -> tuple[Any, Any]:
    return create_selective_checkpoint_contexts(_save_products)


def compile_blocks(model: ZenCoder) -> None:
    """Compile every block in place, each to one whole graph (no graph breaks).

    Every block runs the same code on its own parameters, so they share one compiled graph:
    compiling costs one block's time, not one per block. The grouped expert products compile
    in bfloat16 only: run the compiled model under bfloat16 autocast.
    """
    for block in model.blocks:
        block.compile(fullgraph=True)


def _fully_shard(
    model: ZenCoder, dist: Distributed, param_dtype: torch.dtype | None, cpu_offload: bool
) -> None:
    """Shard each block on its own, so only one block's full parameters exist at a time; the
    root takes the rest (embeddings, final norm, head, projection). With `cpu_offload` the
    shards live in CPU memory, pinned where a GPU copies them (pinning needs one)."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = (
        CPUOffloadPolicy(pin_memory=dist.device.type == "cuda") if cpu_offload else OffloadPolicy()
    )
    mesh = dist.mesh["dp"]
    placement = partial(_shard_placement, ranks=mesh.size())
    for block in model.blocks:
        fully_shard(
            block,
            mesh=mesh,
            mp_policy=policy,
            offload_policy=offload,
            shard_placement_fn=placement,
        )
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)


def _shard_placement(parameter: nn.Parameter, ranks: int) -> Shard:
    """FSDP splits a parameter along its first dimension, which for stacked expert weights
    [E, ...] is the experts: with fewer experts than ranks (a dense base is one expert) some
    ranks would hold whole MLPs and others nothing. Such weights are split along the larger of
    their other two dimensions that tensor parallelism leaves whole."""
    if parameter.dim() != 3 or parameter.shape[0] >= ranks:
        return Shard(0)
    taken = {p.dim for p in getattr(parameter, "placements", ()) if isinstance(p, Shard)}
    free = [dim for dim in (1, 2) if dim not in taken]
    return Shard(max(free, key=lambda dim: parameter.shape[dim]))


def shutdown(dist: Distributed) -> None:
    """Leave the run: wait for every rank, then destroy the process groups and join their
    communication threads while the interpreter is still whole. Drop the model first (FSDP
    holds the groups too); a single process has nothing to do.

    Why joined: a gloo worker thread releases a collective's tensors only after the collective
    has completed, and releasing a tensor that Python also holds takes the GIL. If the
    interpreter has begun to exit by then, CPython (before 3.14) ends that thread with
    pthread_exit inside a C++ destructor, and the process aborts with "terminate called without
    an active exception". `destroy_process_group` only forgets the groups; a group's threads are
    joined when its last reference goes, and the mesh holds them, while torch's DTensor caches
    hold the mesh. So the mesh lets go of its groups here. Blocks compiled under tensor
    parallelism are the exception: torch's compiler keeps its own references to their groups.
    """
    if dist.mesh is None:
        return
    torch_dist.barrier()
    torch_dist.destroy_process_group()
    # The mesh keeps its groups in a private dict, in the torch versions that have one.
    getattr(dist.mesh, "_pg_registry", {}).clear()
    dist.mesh = None
    gc.collect()  # FSDP's hooks and the model form reference cycles
