"""A few training steps of a shrunk tiny model under torchrun; every rank saves what it computed.

test_parallelize.py launches it from the repository root (`torchrun --nproc-per-node N -m
tests.training.parallel_run --tensor-parallel TP [--bfloat16] OUT`) with GPUs hidden, so that it
runs on CPU with gloo, and runs `train` on the same model and batches in its own process as the
reference. Each rank saves OUT/rank-R.pt after it has left the run: the per-step losses, every
parameter's whole gradient after the first step, the logits of the trained model on the first
global batch, its sharding plan and the bytes of expert weights it holds, the first step's
gradients with each kind of activation checkpointing, the logits of the model started on the
meta device, the same training started there with CPU offload (with data parallelism), the
bfloat16 steps (eager and compiled) and the gloo threads still alive after `shutdown`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor

from tests.model.compare import full, gradients
from zen_coder.model.config import preset
from zen_coder.model.model import ZenCoder, next_token_targets
from zen_coder.training.parallelize import (
    Distributed,
    init_distributed,
    materialize,
    parallelize,
    shutdown,
)

# Every technique on, and Qwen3's q/k norms. No repository dropout: it draws random numbers per
# sequence, so a rank holding half the batch would draw different ones than the single-process
# reference.
CONFIG = dataclasses.replace(
    preset("tiny").with_techniques(),
    vocab_size=256,
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    n_experts=4,
    experts_per_token=2,
    expert_dim=32,
    n_repos=5,
    repo_dropout=0.0,
    qk_norm=True,
)
BATCH, LENGTH, STEPS = 4, 16, 3
GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")  # the names gloo gives its threads

Batch = dict[str, Tensor]


def build_model() -> ZenCoder:
    """The same weights in every process; technique tables randomized (they start at zero, a
    no-op), so that splitting the temporal coefficients by head is actually exercised."""
    torch.manual_seed(0)
    model = ZenCoder(CONFIG)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("temporal.weight", "language")) or name.startswith("repo."):
                parameter.normal_(std=0.5)
    return model


def global_batches() -> list[Batch]:
    """One global batch per step: two packed documents per sequence, each sequence from one
    repository, so every half of a batch has contrastive positives."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        tokens = torch.randint(0, CONFIG.vocab_size, (BATCH, LENGTH), generator=generator)
        cut = torch.randint(4, LENGTH - 4, (BATCH, 1), generator=generator)
        segment = 1 + (torch.arange(LENGTH) >= cut).long()
        repo = torch.randint(1, CONFIG.n_repos, (BATCH, 1), generator=generator)
        language = torch.randint(1, CONFIG.n_languages, (BATCH, 1), generator=generator)
        time = torch.randint(0, 200, (BATCH, LENGTH), generator=generator).sort(dim=1).values
        batches.append(
            {
                "tokens": tokens,
                "targets": next_token_targets(tokens, segment),
                "repo": repo.expand(BATCH, LENGTH),
                "language": language.expand(BATCH, LENGTH),
                "time": time,
                "segment": segment,
            }
        )
    return batches


def share(batch: Batch, part: int, parts: int) -> Batch:
    """The `part`-th of `parts` equal slices of a batch's sequences."""
    size = BATCH // parts
    return {name: value[part * size : (part + 1) * size] for name, value in batch.items()}


def train(model: ZenCoder, steps: list[list[Batch]]) -> tuple[Tensor, dict[str, Tensor]]:
    """AdamW over the steps: each step's loss (the mean of its parts' losses, which is what data
    parallelism computes when each rank holds one part) and the first step's gradients."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, first = [], None
    for parts in steps:
        loss = sum(model(**part).loss for part in parts) / len(parts)
        optimizer.zero_grad()
        loss.backward()
        first = gradients(model) if first is None else first
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses), first


@torch.no_grad()
def logits(model: ZenCoder, batch: Batch) -> Tensor:
    """The model's logits on a whole global batch (every rank computes all of them)."""
    inputs = {name: value for name, value in batch.items() if name != "targets"}
    return full(model(inputs.pop("tokens"), **inputs).logits).float()


def describe(model: ZenCoder) -> dict[str, dict]:
    """Each parameter's sharding: its mesh dimensions, placements and local shape."""
    plan = {}
    for name, parameter in model.named_parameters():
        entry = {"shape": list(parameter.shape), "local_shape": list(parameter.shape)}
        if isinstance(parameter, DTensor):
            entry["mesh"] = list(parameter.device_mesh.mesh_dim_names)
            entry["placements"] = [repr(placement) for placement in parameter.placements]
            entry["local_shape"] = list(parameter.to_local().shape)
        plan[name] = entry
    return plan


def bfloat16_steps(dist: Distributed) -> dict:
    """One step with param_dtype=bfloat16, eager then with every block compiled: what each
    computes (logits, whole gradients), and the dtypes the eager one computed and stored in."""
    model = parallelize(build_model(), dist, param_dtype=torch.bfloat16)
    seen = []
    model.blocks[0].attention.q.register_forward_pre_hook(
        lambda module, args: seen.append(str(module.weight.dtype))
    )
    eager = _bfloat16_step(model, dist)
    weight = model.blocks[0].attention.q.weight
    compiled = parallelize(build_model(), dist, param_dtype=torch.bfloat16, compile=True)
    return {
        "eager": eager,
        "compiled": _bfloat16_step(compiled, dist),
        "compute_dtype": seen[0],
        "weight_dtype": str(weight.dtype),
        "grad_dtype": str(weight.grad.dtype),
    }


def _bfloat16_step(model: ZenCoder, dist: Distributed) -> dict:
    """Forward and backward of this rank's share of the first batch under bfloat16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**share(global_batches()[0], dist.dp_rank, dist.dp_size))
    output.loss.backward()
    return {"logits": full(output.logits).float(), "gradients": gradients(model)}


def gloo_threads() -> list[str]:
    """The gloo threads of this process (Linux names threads in /proc)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # a thread that ended meanwhile
            continue
        if name in GLOO_THREADS:
            names.append(name)
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--bfloat16", action="store_true", help="also run the bfloat16 steps")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    dist = init_distributed(args.tensor_parallel)
    report = _run(dist, args.bfloat16)
    shutdown(dist)
    report["gloo_threads"] = gloo_threads()
    torch.save(report, args.out / f"rank-{report['rank']['rank']}.pt")


def _run(dist: Distributed, bfloat16: bool) -> dict:
    """Everything this rank reports but its threads; the models it built are gone on return."""
    model = parallelize(build_model(), dist)
    plan, expert_bytes = describe(model), local_bytes(model, ".moe.experts.")
    steps = [[share(batch, dist.dp_rank, dist.dp_size)] for batch in global_batches()]
    fields = ("rank", "world_size", "local_rank", "dp_rank", "dp_size", "tp_size", "is_main")
    return {
        **trained(model, dist, steps),
        "plan": plan,  # before a forward, which leaves FSDP's root unsharded
        "expert_bytes": expert_bytes,
        "checkpointed": {
            mode: first_step(parallelize(build_model(), dist, activation_checkpointing=mode), steps)
            for mode in ("full", "selective")
        },
        "offloaded": offloaded(dist, steps) if dist.dp_size > 1 else None,
        "meta_start_logits": logits(meta_start(dist), global_batches()[0]),
        "rank": {name: getattr(dist, name) for name in fields},
        "mesh": list(dist.mesh.mesh_dim_names),
        "bfloat16": bfloat16_steps(dist) if bfloat16 else None,
    }


def trained(model: ZenCoder, dist: Distributed, steps: list[list[Batch]]) -> dict:
    """Train on the steps: the mean loss of each step over the data-parallel ranks, the first
    step's whole gradients and the trained model's logits on the first global batch."""
    losses, first = train(model, steps)
    torch_dist.all_reduce(losses)  # tensor-parallel ranks hold equal losses: mean over "dp"
    return {
        "losses": losses / dist.world_size,
        "gradients": first,
        "logits": logits(model, global_batches()[0]),
    }


def offloaded(dist: Distributed, steps: list[list[Batch]]) -> dict:
    """Started on the meta device and trained with FSDP's CPU offload, and the offload policy
    each sharded module took."""
    model = meta_start(dist, cpu_offload=True)
    modules = [*model.blocks, model]
    policies = [type(m._get_fsdp_state()._fsdp_param_group.offload_policy) for m in modules]
    return {**trained(model, dist, steps), "policies": [policy.__name__ for policy in policies]}


def first_step(model: ZenCoder, steps: list[list[Batch]]) -> dict[str, Tensor]:
    """The whole gradients of the first step."""
    return train(model, steps[:1])[1]


def meta_start(dist: Distributed, cpu_offload: bool = False) -> ZenCoder:
    """The model built on the meta device, parallelized, materialized and filled with
    build_model's weights, each rank taking its own shards of them."""
    with torch.device("meta"):
        model = ZenCoder(CONFIG)
    parallelize(model, dist, cpu_offload=cpu_offload)
    materialize(model, dist, cpu_offload)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, build_model().state_dict(), options=options)
    return model


def local_bytes(model: ZenCoder, part: str) -> int:
    """Bytes this rank holds of the parameters whose names contain `part`."""
    total = 0
    for name, parameter in model.named_parameters():
        if part in name:
            local = parameter.to_local() if isinstance(parameter, DTensor) else parameter
            total += local.numel() * local.element_size()
    return total


if __name__ == "__main__":
    main()
