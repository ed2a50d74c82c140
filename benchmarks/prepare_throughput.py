"""Throughput of `zen-coder prepare` against raw `tokenizers` `encode_batch`, same texts, same run.

For a synthetic repository of real code (synthetic_repo.py, mined first) and for this repository:

- `zen-coder prepare` with an existing tokenizer (the per-corpus work: reading the records,
  building samples, decontamination, tokenization, packing, writing), and end to end with
  tokenizer training;
- the floor: the same tokenizer's `encode_batch` over exactly the texts of those samples.

Target: prepare at least 0.7x the tokens/s of `encode_batch`.

Then the data loader (zen_coder.data.loader) streaming those packed sequences against the `tiny`
model training on them (forward, backward and an AdamW step, techniques on): the loader must
deliver at least 10x the tokens/s training consumes, so data never starves training.

    python benchmarks/prepare_throughput.py [--commits 3000] [--benchmarks DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def synthetic_repo(commits: int) -> Path:
    target = Path(tempfile.gettempdir()) / f"zen-coder-bench-synthetic-{commits}"
    if not (target / ".git").exists():
        print(f"building a {commits:,}-commit repository in {target} ...", flush=True)
        command = [sys.executable, str(HERE / "synthetic_repo.py"), str(target)]
        subprocess.run([*command, "--commits", str(commits)], check=True)
    return target


def sample_texts(mined: Path, config) -> list[str]:
    """The text parts of every sample prepare builds, in order (special tokens excluded)."""
    from zen_coder.data.pipeline import _repository_samples, split_repositories
    from zen_coder.data.records import open_mined

    dataset = open_mined(mined)
    texts = []
    for repo in split_repositories(dataset, config.validation_fraction):
        for sample in _repository_samples(dataset, repo, config):
            texts += [value for special, value, _ in sample.parts if not special]
    return texts


def report(name: str, repo: Path, benchmarks: list[str]) -> None:
    from zen_coder.data.config import load_prepare_config
    from zen_coder.data.pipeline import BATCH, prepare
    from zen_coder.data.tokenizer import load_tokenizer
    from zen_coder.history.pipeline import mine
    from zen_coder.history.sources import RepoSpec

    config = load_prepare_config(ROOT / "configs" / "tiny.toml")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        mined = scratch / "mined"
        mine([RepoSpec(str(repo))], mined, salt=b"benchmark")
        start = time.perf_counter()
        trained = prepare(mined, scratch / "trained", config, benchmarks=benchmarks)
        end_to_end = time.perf_counter() - start
        start = time.perf_counter()
        reused = prepare(
            mined, scratch / "reused", config, tokenizer=trained.out, benchmarks=benchmarks
        )
        seconds = time.perf_counter() - start
        tokens = sum(reused.manifest["tokens"].values())
        texts = sample_texts(mined, config)
        tokenizer = load_tokenizer(trained.out)
        start = time.perf_counter()
        raw_tokens = 0
        for first in range(0, len(texts), BATCH * 5):
            encodings = tokenizer.encode_batch(texts[first : first + BATCH * 5])
            raw_tokens += sum(len(encoding.ids) for encoding in encodings)
        raw = time.perf_counter() - start
        if name == "synthetic repository":
            loader_against_training(reused.out)
    characters = sum(map(len, texts))
    print(f"\n== {name}: {repo} ==")
    print(f"samples' text: {characters / 1e6:,.1f} M characters, {raw_tokens:,} tokens")
    print(f"{'':34}{'seconds':>10}{'tokens':>14}{'tokens/s':>12}")
    rows = [
        ("prepare (given tokenizer)", seconds, tokens),
        ("prepare (training the tokenizer)", end_to_end, tokens),
        ("tokenizers encode_batch", raw, raw_tokens),
    ]
    for label, elapsed, count in rows:
        print(f"{label:34}{elapsed:10.2f}{count:14,}{count / elapsed:12,.0f}")
    ratio = (tokens / seconds) / (raw_tokens / raw)
    print(f"prepare vs encode_batch: {ratio:.2f}x the tokens/s (target >= 0.7x)")
    sequences = reused.manifest["sequences"]
    print(f"prepared: {sequences} sequences of {reused.manifest['context_length']} tokens")


def loader_against_training(prepared: Path, batches: int = 20, batch_size: int = 8) -> None:
    import torch

    from zen_coder.data.loader import PackedDataset, PackedLoader
    from zen_coder.model.config import preset
    from zen_coder.model.model import ZenCoder, next_token_targets

    dataset = PackedDataset(prepared, "train", batch_size=batch_size)
    loader = PackedLoader(dataset)
    start = time.perf_counter()
    loaded = 0
    for batch in loader:
        loaded += batch["tokens"].numel()
    load_rate = loaded / (time.perf_counter() - start)
    repos = len(json.loads((prepared / "repos.json").read_text()))
    model = ZenCoder(dataclasses.replace(preset("tiny"), n_repos=repos)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stream = iter(PackedLoader(PackedDataset(prepared, "train", batch_size=batch_size)))
    trained = 0
    for step in range(batches + 2):
        batch = next(stream)
        if step == 2:  # after warm-up
            start, trained = time.perf_counter(), 0
        targets = next_token_targets(batch["tokens"], batch["segment"])
        channels = {name: batch[name] for name in ("repo", "language", "time", "segment")}
        loss = model(batch["tokens"], targets=targets, **channels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trained += batch["tokens"].numel()
    train_rate = trained / (time.perf_counter() - start)
    print(f"\n== data loader against training ({prepared.name}) ==")
    print(f"loader: {loaded:,} tokens at {load_rate:,.0f} tokens/s (one epoch, batch {batch_size})")
    print(f"tiny model training: {train_rate:,.0f} tokens/s (forward, backward, AdamW)")
    print(f"loader vs training: {load_rate / train_rate:,.0f}x (target >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=3_000, help="synthetic repository size")
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=[str(ROOT.parent / "shared" / "benchmarks")],
        help="decontamination sources (default: ../shared/benchmarks)",
    )
    args = parser.parse_args()
    report("synthetic repository", synthetic_repo(args.commits), args.benchmarks)
    report("this repository", ROOT, args.benchmarks)


if __name__ == "__main__":
    main()
