"""Starting a model from a Hugging Face folder: sharded against unsharded, time and peak memory.

In one run, on a synthetic Mixtral folder of a preset's shape (bfloat16 weights, as bases ship),
each way of starting runs under torchrun on `--ranks` processes (gloo on CPU) and every rank
reports its seconds and its peak resident memory:

    unsharded   what the trainer did before the sharded start: every rank builds the whole
                model on its device (float32, randomly initialized), reads every tensor of the
                folder into it, then parallelizes it (FSDP2 keeps the rank's shards)
    sharded     the trainer's start (`zen_coder.model.weights.build`): the model built on the
                meta device, parallelized, materialized empty, then each rank reads only the
                slices of its own shards
    idle        the same processes doing nothing: imports and the process group, the floor
                under both

The ratios printed are unsharded over sharded, of the time and of the memory above the floor.
`--layers` shrinks the preset's depth (the `small` preset's 18 blocks are 11 GB in float32; two
keep the run to a few GB on a small machine), `--width-divisor` its width.

    python benchmarks/start_time.py                          # small, 2 blocks, 2 ranks
    python benchmarks/start_time.py --layers 18 --ranks 8    # the whole preset, on a big host

`measure(folder, mode, ranks)` is the measurement alone, for other benchmarks to reuse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from zen_coder.model import hf
from zen_coder.model.config import preset
from zen_coder.model.model import ZenCoder
from zen_coder.model.weights import build, fill, initial_sources
from zen_coder.training.parallelize import init_distributed, parallelize, shutdown

MODES = ("idle", "unsharded", "sharded")


def synthetic_folder(folder: Path, name: str, layers: int, divisor: int) -> int:
    """A Mixtral folder of preset `name`'s shape (its techniques off), bfloat16 weights;
    returns its parameter count."""
    base = preset(name).without_techniques()
    config = dataclasses.replace(
        base,
        n_layers=layers,
        d_model=base.d_model // divisor,
        expert_dim=base.expert_dim // divisor,
        vocab_size=base.vocab_size // divisor,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = ZenCoder(config)
    finally:
        torch.set_default_dtype(default)
    hf.save_pretrained(model, folder)
    return sum(parameter.numel() for parameter in model.parameters())


def _resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _start(folder: Path, mode: str) -> None:
    """One rank's start of the model in `folder`, the way `mode` names."""
    dist = init_distributed()
    config, sources = hf.pretrained_sources(folder)
    rank = dist.rank
    before = _resident_bytes()
    started = time.perf_counter()
    if mode == "unsharded":
        model = ZenCoder(config).to(dist.device)
        fill(model, {**initial_sources(model, 0), **sources})
        parallelize(model, dist)
    elif mode == "sharded":
        model = build(
            config, sources, seed=0, device=dist.device, prepare=lambda m: parallelize(m, dist)
        )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    print(json.dumps({"rank": rank, "seconds": seconds, "before": before, "peak": peak}))
    model = None
    shutdown(dist)


def measure(folder: Path, mode: str, ranks: int) -> list[dict]:
    """Each rank's {"seconds", "before", "peak"} (bytes) for starting the model in `folder`
    the way `mode` names, under torchrun with `ranks` processes on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(ranks), __file__, "--worker", mode, str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{mode} start failed:\n{result.stderr[-4000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return sorted((json.loads(line) for line in lines), key=lambda record: record["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("folder", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _start(args.folder, args.worker)
        return
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "base"
        count = synthetic_folder(folder, args.preset, args.layers, args.width_divisor)
        print(
            f"{args.preset}, {args.layers} blocks, width / {args.width_divisor}: "
            f"{count / 1e6:,.0f} M parameters, {4 * count / 2**30:.2f} GiB in float32; "
            f"{args.ranks} ranks, gloo on CPU"
        )
        results = {mode: measure(folder, mode, args.ranks) for mode in MODES}
    floor = max(record["peak"] for record in results["idle"])
    print(f"{'start':<10} {'seconds':>8} {'peak RSS GiB':>13} {'above idle GiB':>15}")
    summary = {}
    for mode in MODES[1:]:
        seconds = max(record["seconds"] for record in results[mode])
        peak = max(record["peak"] for record in results[mode])
        summary[mode] = (seconds, peak - floor)
        print(f"{mode:<10} {seconds:8.2f} {peak / 2**30:13.2f} {(peak - floor) / 2**30:15.2f}")
    print(f"{'idle':<10} {'':>8} {floor / 2**30:13.2f}")
    (slow, big), (fast, small) = summary["unsharded"], summary["sharded"]
    print(f"unsharded / sharded: time {slow / fast:.2f}x, memory above idle {big / small:.2f}x")


if __name__ == "__main__":
    main()
