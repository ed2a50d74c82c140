"""Training throughput and model FLOPs utilization (MFU), against the device's measured peak.

In one run, on one device: the peak FLOP/s a plain matrix product reaches (the same dtype), then
training steps of a preset (forward, backward, clipping and an AdamW step, the history techniques
on) on random tokens with random side channels. MFU is the model's training FLOPs per token
(6N + 12·L·H·Hd·T, PaLM's accounting, N the active parameters) times tokens/s, over that peak.

    python benchmarks/train_throughput.py                                   # tiny, CPU
    python benchmarks/train_throughput.py --preset small --device cuda --dtype bfloat16 \
        --attention flex --compile --accumulation 4

`--accumulation N` runs N micro-batches per optimizer step, as training does (the card's batch
is 256 sequences): the optimizer's fixed cost is then shared by N micro-batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from zen_coder.model.config import preset
from zen_coder.model.model import ZenCoder, next_token_targets
from zen_coder.model.summary import flops_per_token, parameter_counts
from zen_coder.training.config import TrainConfig
from zen_coder.training.optim import build_optimizer
from zen_coder.training.parallelize import compile_blocks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 20) -> float:
    """FLOP/s of a square matrix product: what this device can do at best, in practice."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def batch(config, batch_size: int, length: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, length)

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=generator).to(device)

    tokens = draw(config.vocab_size)
    segment = torch.ones(shape, dtype=torch.long, device=device)
    segment[:, length // 2 :] = 2  # two documents per sequence, as packing makes them
    return {
        "tokens": tokens,
        "repo": draw(config.n_repos),
        "language": draw(config.n_languages),
        "time": draw(64).sort(dim=1).values,
        "segment": segment,
        "targets": next_token_targets(tokens, segment),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--length", type=int, default=0, help="tokens per sequence (0: context)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiling, too)")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--profile", type=int, default=0, help="then profile this many steps")
    parser.add_argument("--techniques", choices=["on", "off"], default="on")
    parser.add_argument("--attention", choices=["sdpa", "flex"], default="sdpa")
    parser.add_argument("--matmul-size", type=int, default=0, help="0: 8192 on GPU, 2048 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    config = dataclasses.replace(preset(args.preset), n_repos=8)
    if args.techniques == "off":
        config = config.without_techniques()
    length = args.length or config.context_length
    config = dataclasses.replace(config, context_length=length, attention=args.attention)
    torch.manual_seed(0)
    model = ZenCoder(config).to(device).train()
    if args.compile:
        compile_blocks(model)
    optimizer = build_optimizer(model, TrainConfig(), device)
    inputs = batch(config, args.batch, length, device)
    tokens = inputs.pop("tokens")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step() -> float:
        for _ in range(args.accumulation):
            with autocast:
                loss = model(tokens, **inputs).loss
            (loss / args.accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    synchronize(device)
    print(f"{args.warmup} warm-up steps (compiling included): {time.perf_counter() - start:.1f} s")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = matmul_peak(device, dtype, args.matmul_size or (8192 if device.type == "cuda" else 2048))
    counts = parameter_counts(config)
    flops = flops_per_token(config, counts)["training"]
    rate = args.steps * args.accumulation * args.batch * length / seconds
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.dtype}"
    )
    print(
        f"model: {args.preset}, techniques {args.techniques}, {args.attention} attention, "
        f"{'compiled' if args.compile else 'eager'}, {counts['total']:,} parameters "
        f"({counts['active']:,} active), batch {args.batch} x {length} tokens, "
        f"{args.accumulation} micro-batch(es) per optimizer step"
    )
    print(
        f"training: {rate:,.0f} tokens/s ({seconds / args.steps * 1000:,.1f} ms/step), "
        f"last loss {loss:.3f}"
    )
    achieved = rate * flops
    print(f"model FLOPs: {flops / 1e9:,.2f} GFLOP/token -> {achieved / 1e12:,.3f} TFLOP/s")
    print(f"peak (plain {args.dtype} matmul, same device, same run): {peak / 1e12:,.3f} TFLOP/s")
    print(f"MFU: {achieved / peak * 100:.1f}% of the measured peak")
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory: {memory:,.1f} GiB")
    if args.profile:
        profile(step, args.profile, device)


def profile(step, steps: int, device: torch.device) -> None:
    """Where the time of a few steps goes: the operators that take the most device time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
