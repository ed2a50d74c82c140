"""Measure what a plan predicts: the peak memory of real training steps on this machine.

    torchrun --nproc-per-node 2 -m zen_coder.training.measure --config RECIPE [--set ...]
    python -m zen_coder.training.measure --config RECIPE          # one process

Every rank builds the recipe's model, parallelizes it as `zen-coder train` does and runs a few
optimizer steps of the trainer's own loop (`trainer._accumulate`, clipping, AdamW) on random
tokens of the recipe's shape. The peak is measured without the planner's tracker:
- on a GPU, by CUDA's caching allocator (`torch.cuda.max_memory_allocated`);
- on a CPU, from torch.profiler's memory events (every allocation and free of the CPU allocator,
  summed in time order), and, as a second opinion, from the kernel: the process's peak resident
  set (VmHWM, reset at the start) above its size before the model was built, less the pages of
  code and libraries first read meanwhile. The resident set also holds what no torch tensor
  owns (autograd's graph, oneDNN's buffers for bfloat16 products), so it reads higher.
Then rank 0 plans the same recipe for the same number of ranks and prints both.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.profiler import ProfilerActivity, profile

from zen_coder.errors import ZenCoderError
from zen_coder.files import write_json_atomic
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder
from zen_coder.training.config import TrainConfig
from zen_coder.training.optim import build_optimizer
from zen_coder.training.parallelize import Distributed, init_distributed, shutdown
from zen_coder.training.plan import (
    Cluster,
    local_bytes,
    plan,
    planned_configs,
    synthetic_batch,
)
from zen_coder.training.trainer import _accumulate, _clip, prepare_model

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@dataclass
class Measured:
    """One rank's figures, in bytes."""

    rank: int
    device: str
    parameters: int  # the rank's local shards of the parameters
    peak: int  # the most the allocator had handed out at once
    resident: int | None  # CPU: peak resident set above the baseline, less new code pages


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (the kernel reports kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise ZenCoderError(f"/proc/self/status has no {field}: measuring needs Linux")


def _map_large_blocks() -> None:
    """Have glibc map every block of 64 KiB or more on its own (M_MMAP_THRESHOLD), as it does
    by default only up to a threshold it raises as it goes: a freed tensor then leaves the
    resident set at once, and the resident peak reads what was alive rather than what the C
    allocator kept. Elsewhere than glibc, nothing to do."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):
        pass


def _profiled_peak(result) -> int:
    """The largest sum of the CPU allocator's allocations less its frees, in time order."""
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in result.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


def _model(config: ModelConfig, train: TrainConfig, dist: Distributed) -> ZenCoder:
    """The model as `zen-coder train` builds it (random weights) and parallelizes it."""
    return prepare_model(ZenCoder(config).to(dist.device), train, dist)


def _batches(config: ModelConfig, size: int) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield synthetic_batch(config, size, config.context_length, "cpu")


def measure(model_config: ModelConfig, train: TrainConfig, steps: int = 3) -> list[Measured]:
    """Every rank's figures for `steps` optimizer steps (all ranks take part; every rank gets
    the list)."""
    dist = init_distributed(train.tensor_parallel)
    try:
        accumulation = train.micro_batches(dist.dp_size)
        torch.manual_seed(train.seed)
        on_gpu = dist.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(dist.device)
        else:
            _map_large_blocks()
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current size
        baseline, code = _status("VmRSS"), _status("RssFile")
        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with contextlib.nullcontext() if on_gpu else profiler:
            model = _model(model_config, train, dist)
            parameters = local_bytes(model.parameters())
            optimizer = build_optimizer(model, train, dist.device)
            stream = _batches(model_config, train.micro_batch)
            for _ in range(steps):
                _, loads, _, _ = _accumulate(model, stream, accumulation, train, dist, pad_id=-1)
                _clip(model, train.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                model.update_expert_biases(loads)
        if on_gpu:
            peak, resident = torch.cuda.max_memory_allocated(dist.device), None
        else:
            peak = _profiled_peak(profiler.profiler.kineto_results)
            resident = _status("VmHWM") - baseline - (_status("RssFile") - code)
        mine = Measured(dist.rank, dist.device.type, parameters, peak, resident)
        if dist.mesh is None:
            return [mine]
        everyone: list[Measured | None] = [None] * dist.world_size
        torch_dist.all_gather_object(everyone, mine)
        return everyone
    finally:
        shutdown(dist)


def _device_memory(device: str) -> int:
    """This machine's memory per device: the GPU's, or the host's on a CPU."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def compare(recipe: Path | None, assignments: list[str], steps: int = 3) -> dict | None:
    """Measure every rank, then (on rank 0, which returns the report) plan the same run."""
    model_config, train = planned_configs(recipe, assignments)
    ranks = measure(model_config, train, steps)
    if ranks[0].rank != 0 or int(os.environ.get("RANK", "0")) != 0:
        return None
    device = ranks[0].device
    cluster = Cluster(len(ranks), _device_memory(device), device=device)
    planned = plan(model_config, train, cluster)
    highest = max(rank.peak for rank in ranks)
    # On a CPU the offloaded shards share the one memory with the rest.
    peak = planned.total + (planned.host if device == "cpu" else 0)
    return {
        "ranks": len(ranks),
        "device": device,
        "planned": {
            "parameters": planned.parameters,  # the rank's shards
            "peak": peak,
            "at_peak": planned.peak,  # the plan's rows, on the device
            "host": planned.host,  # offloaded, per rank
        },
        "measured": [asdict(rank) for rank in ranks],
        "ratio": peak / highest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zen_coder.training.measure")
    parser.add_argument("--config", type=Path, help="recipe (TOML)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (default 3)")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    try:
        report = compare(args.config, args.set, args.steps)
    except ZenCoderError as exc:
        print(f"zen-coder measure: error: {exc}", file=sys.stderr)
        return 2
    if report is None:
        return 0
    for rank in report["measured"]:
        resident = rank["resident"]
        print(
            f"rank {rank['rank']}: parameters {rank['parameters']:,} B, peak {rank['peak']:,} B"
            + ("" if resident is None else f", resident {resident:,} B")
        )
    print(
        f"planned: parameters {report['planned']['parameters']:,} B, peak "
        f"{report['planned']['peak']:,} B; planned / measured peak {report['ratio']:.3f}"
    )
    if args.out is not None:
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
