"""Parallelism applied to the model from outside: the model code knows nothing of it.

The ranks form a 2-D mesh ("dp", "tp"). Tensor-parallel ranks are the inner dimension, so they
are neighbours (the same node on a GPU cluster): they exchange activations twice per block,
while data-parallel ranks exchange only parameters and gradients.

Tensor parallelism (Megatron style) splits each block's attention by heads: q, k, v and the
temporal-attention coefficients are split by output rows (column-wise), so each rank computes
its own heads; o is split by input columns (row-wise) and its partial outputs are all-reduced.
Qwen3's q/k norms act per head, so each rank applies the whole (replicated) weight to its own
heads, and the weight's gradient, a sum over every head, is all-reduced.
Then each block may be compiled (`torch.compile`): one graph per block, shared by all blocks,
fuses the small elementwise kernels (norms, rotary embedding, casts, SwiGLU) and cuts kernel
launches. Last, FSDP2 shards every parameter over "dp", one block at a time, so a block's
parameters are gathered just before it runs and freed after.

The current plan's limit: the mixture of experts (router and experts), the embeddings, the norms
and the output head are replicated across tensor-parallel ranks, so every tp rank computes the
MoE on the same tokens (FSDP still shards the expert weights over "dp"). Expert parallelism,
which would give each rank its own experts, is future work.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from zen_coder.errors import ZenCoderError
from zen_coder.model.model import ZenCoder


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
) -> ZenCoder:
    """Apply tensor parallelism (tp_size > 1), compile each block (`compile`), then FSDP2 over
    "dp" (dp_size > 1), in place.

    Every rank must hold the same full weights (build the model from the same seed on
    dist.device): each rank keeps its own share of them. Tensor parallelism comes first because
    FSDP2 shards the tensor-parallel shards further, along "dp".

    `param_dtype` (bfloat16) is the dtype FSDP gathers parameters in for compute; gradients are
    still reduced in float32 and the sharded master weights stay float32. It applies only
    where FSDP does (dp_size > 1), and the forward still wants autocast: the rotary embedding
    promotes bfloat16 queries and keys to float32, and attention rejects mixed dtypes.
    """
    config = model.config
    for name in ("n_heads", "n_kv_heads"):
        heads = getattr(config, name)
        if heads % dist.tp_size:
            raise ZenCoderError(f"tensor_parallel={dist.tp_size} must divide model {name}={heads}")
    if dist.tp_size > 1:
        _tensor_parallel(model, dist.mesh["tp"])
    if compile:
        compile_blocks(model)
    if dist.dp_size > 1:
        _fully_shard(model, dist.mesh["dp"], param_dtype)
    return model


def _tensor_parallel(model: ZenCoder, mesh: DeviceMesh) -> None:
    """Split every block's attention by heads across the "tp" ranks."""
    plan = {
        "q": ColwiseParallel(),
        "k": ColwiseParallel(),
        "v": ColwiseParallel(),
        "o": RowwiseParallel(),
    }
    if model.config.temporal_attention:
        # Its rows are grouped by head like q's, so a column-wise split gives each rank the
        # coefficients of its own heads.
        plan["temporal"] = ColwiseParallel()
    if model.config.qk_norm:
        # Each rank normalizes its own heads (dimension 2 of [B, T, heads, Hd]) with the whole
        # weight, replicated; its gradient sums over every head, so it is all-reduced.
        plan["q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    for block in model.blocks:
        parallelize_module(block.attention, mesh, plan)


def compile_blocks(model: ZenCoder) -> None:
    """Compile every block in place, each to one whole graph (no graph breaks).

    Every block runs the same code on its own parameters, so they share one compiled graph:
    compiling costs one block's time, not one per block. The grouped expert products compile
    in bfloat16 only: run the compiled model under bfloat16 autocast.
    """
    for block in model.blocks:
        block.compile(fullgraph=True)


def _fully_shard(model: ZenCoder, mesh: DeviceMesh, param_dtype: torch.dtype | None) -> None:
    """Shard each block on its own, so only one block's full parameters exist at a time; the
    root takes the rest (embeddings, final norm, head, projection)."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


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
