"""Throughput of the native engine against transformers' `generate`, one request at a time.

The `tiny` preset with the card's techniques off (so that it exports to Hugging Face as a
Mixtral), random weights, random prompts; every completion runs to `--new-tokens` (end of text
ignored on both sides). Measured in one run, on the same CPU:

- baseline: the exported model answering the requests one after another with `generate`;
- the engine answering them one after another, and all at once (continuous batching), with and
  without prompt-lookup drafts (random prompts give drafts little to copy);
- the engine's decoding step with 1 and with `--requests` active requests (short prompts, so
  nearly every step decodes), the best of three rounds.

Target (issue 14): at 8 concurrent requests, at least 4x the baseline's tokens/s. This measures
the engine alone; `benchmarks/serve_latency.py` measures it behind the server with keystrokes.

    python benchmarks/engine_throughput.py [--requests 8] [--new-tokens 64] [--prompt-tokens 200]
                                           [--threads N]
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer, save_tokenizer, train_tokenizer
from zen_coder.inference.engine import Engine, EngineRequest
from zen_coder.inference.stopping import CutOff
from zen_coder.model.config import preset
from zen_coder.model.hf import save_pretrained
from zen_coder.model.model import ZenCoder

KEEP_ALL = CutOff(multiline="multi")


def tokenizer(folder: Path, vocabulary: int) -> RoleTokenizer:
    """A byte-level BPE tokenizer of the preset's vocabulary, trained on the standard library."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    texts = [path.read_text(errors="replace")[:20_000] for path in files]
    save_tokenizer(train_tokenizer(texts, vocabulary), folder, context_length=512)
    return read_tokenizer(folder)


def baseline(folder: Path, prompts: list[list[int]], new_tokens: int, pad_id: int) -> float:
    """Tokens/s of transformers' `generate`, one request after another."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()

    def one(ids: list[int]) -> int:
        with torch.no_grad():
            output = model.generate(
                torch.tensor([ids]),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        return output.shape[1] - len(ids)

    one(prompts[0])  # warm-up
    started = time.perf_counter()
    tokens = sum(one(ids) for ids in prompts)
    return tokens / (time.perf_counter() - started)


def engine_run(
    engine: Engine, prompts: list[list[int]], new_tokens: int, together: bool, speculate: bool
) -> tuple[float, float]:
    """Tokens/s and median completion latency (s) of the engine, the requests submitted all at
    once or one after another."""

    def request(ids: list[int]) -> EngineRequest:
        return EngineRequest(
            ids=ids, max_tokens=new_tokens, cutoff=KEEP_ALL, ignore_eos=True, speculate=speculate
        )

    before = engine.stats().completion_tokens
    started = time.perf_counter()
    latencies = []
    if together:
        streams = [engine.submit(request(ids)) for ids in prompts]
        for stream in streams:
            stream.text()
            latencies.append(time.perf_counter() - started)
    else:
        for ids in prompts:
            submitted = time.perf_counter()
            engine.submit(request(ids)).text()
            latencies.append(time.perf_counter() - submitted)
    elapsed = time.perf_counter() - started
    tokens = engine.stats().completion_tokens - before
    return tokens / elapsed, sorted(latencies)[len(latencies) // 2]


def step_time(engine: Engine, prompts: list[list[int]], active: int) -> float:
    """Seconds per engine step with `active` requests decoding, best of three rounds."""
    best = float("inf")
    for _ in range(3):
        steps = engine.stats().steps
        started = time.perf_counter()
        streams = [
            engine.submit(
                EngineRequest(
                    ids=ids[:8], max_tokens=128, cutoff=KEEP_ALL, ignore_eos=True, speculate=False
                )
            )
            for ids in prompts[:active]
        ]
        for stream in streams:
            stream.text()
        best = min(best, (time.perf_counter() - started) / (engine.stats().steps - steps))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads for both sides; on a machine shared with other jobs, 1 (two threads "
        "that wait for each other at every operation slow both sides many times over)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = preset("tiny").without_techniques()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        roles = tokenizer(scratch / "tokenizer", config.vocab_size)
        model = ZenCoder(config).eval()
        ids = {"eos_token_id": roles.eos_id, "bos_token_id": roles.bos_id}
        save_pretrained(model, scratch / "hf", token_ids={**ids, "pad_token_id": roles.pad_id})
        generator = torch.Generator().manual_seed(1)
        prompts = [
            torch.randint(20, config.vocab_size, (args.prompt_tokens,), generator=generator)
            for _ in range(args.requests)
        ]
        prompts = [prompt.tolist() for prompt in prompts]
        print(
            f"tiny preset, {args.requests} requests of {args.prompt_tokens} prompt tokens and "
            f"{args.new_tokens} new tokens, {torch.get_num_threads()} threads"
        )
        base = baseline(scratch / "hf", prompts, args.new_tokens, roles.pad_id)
        print(f"baseline, transformers generate one at a time: {base:8.1f} tokens/s")

    for together, speculate in ((False, False), (True, False), (True, True)):
        # A fresh engine each time: no slot holds these prompts from an earlier run.
        with Engine(model, roles, slots=args.requests) as engine:
            engine.submit(EngineRequest(ids=[5] * 16, max_tokens=4)).text()  # warm-up
            rate, latency = engine_run(engine, prompts, args.new_tokens, together, speculate)
        how = f"{args.requests} at once" if together else "one at a time"
        drafts = "with drafts" if speculate else "no drafts"
        print(
            f"engine, {how:>13}, {drafts:>11}: {rate:8.1f} tokens/s "
            f"({rate / base:5.1f}x baseline), median latency {latency * 1000:6.0f} ms"
        )
    with Engine(model, roles, slots=args.requests) as engine:
        one, many = step_time(engine, prompts, 1), step_time(engine, prompts, args.requests)
        print(
            f"engine step: 1 active {one * 1000:.2f} ms, {args.requests} active "
            f"{many * 1000:.2f} ms ({many / one:.2f}x the time for {args.requests}x the tokens)"
        )


if __name__ == "__main__":
    main()
