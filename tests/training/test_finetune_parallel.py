"""The sharded start under torchrun: `zen-coder train` from a dense Hugging Face base, with
data parallel 2 and tensor parallel 2 (gloo on CPU), against one process.

Every rank builds the model on the meta device, parallelizes it and reads from the base only
the slices of its own shards (tests/training/start_run.py measures it). The first losses are one
process's, and each rank holds only its share: its own pieces of the weights, plus the pieces
of the one parameter being filled and the slices read for it. Measured by hand (torch 2.13,
2-core CPU), from the base upcycled into 4 experts: the first training and validation losses
agree within 1e-7; a data-parallel rank holds 50 % of the model and peaks at 60 % and 63 % while
starting, one process peaks at 120 %. Broken on purpose: building the model on the CPU before
parallelizing it (`weights.build` without the meta device), each data-parallel rank peaks at
122 %, over its bound of 63 % and 75 %; FSDP splitting the dense base's one expert along the
experts (dimension 0), one rank holds the whole MLP and peaks at 4.9 MB against a bound of 2.4 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.test_prepare import build_history, mined
from tests.training.bases import hf_base
from tests.training.start_run import measured_start
from tests.training.test_train import FAST, ROOT, configs
from zen_coder.data.config import PrepareConfig
from zen_coder.data.pipeline import prepare
from zen_coder.training.metrics import read_metrics
from zen_coder.training.trainer import train

# The dense base as it is, one expert: FSDP splits its MLP along the model width, not across
# experts (parallelize._shard_placement). Repository dropout off, since it draws per sequence
# from each rank's seed.
RECIPE = ["train.steps=1", "train.lr=1e-4", "model.repo_dropout=0"]
LOSS_TOLERANCE = 1e-5
LAYOUTS = {"data_parallel": (2, 1), "tensor_parallel": (2, 2)}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return hf_base(tmp_path_factory.mktemp("base") / "qwen2", "qwen2", width=256)


@pytest.fixture(scope="module")
def data(base, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune-data")
    repo = build_history(root / "repo", commits=30)
    out = root / "prepared"
    config = PrepareConfig(context_length=64, decontaminate=False)
    prepare(mined(root, repo), out, config, tokenizer=base, benchmarks=[])
    return out


@pytest.fixture(scope="module")
def single(data, base, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("single") / "run"
    with measured_start(out.parent / "stats", rank=0):
        train(data, out, *configs(*RECIPE, f"train.init_from={base}"))
    return out, read_stats(out.parent / "stats", 1)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def parallel(request, data, base, tmp_path_factory) -> tuple[Path, list[dict]]:
    processes, tensor_parallel = LAYOUTS[request.param]
    out = tmp_path_factory.mktemp(request.param) / "run"
    arguments = ["--data", str(data), "--out", str(out), "--quiet"]
    arguments += ["--config", str(ROOT / "configs" / "tiny.toml")]
    settings = [*FAST, *RECIPE, f"train.init_from={base}"]
    for setting in [*settings, f"train.tensor_parallel={tensor_parallel}"]:
        arguments += ["--set", setting]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), "-m", "tests.training.start_run"]
    command += [str(out.parent / "stats"), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return out, read_stats(out.parent / "stats", processes)


def read_stats(folder: Path, ranks: int) -> list[dict]:
    return [json.loads((folder / f"start-rank-{rank}.json").read_text()) for rank in range(ranks)]


def first_losses(run: Path) -> dict[str, float]:
    events = read_metrics(run)
    return {
        kind: next(event["loss"] for event in events if event["kind"] == kind)
        for kind in ("validation", "train")
    }


def test_the_sharded_start_gives_the_first_losses_of_one_process(single, parallel):
    expected, got = first_losses(single[0]), first_losses(parallel[0])
    for kind, loss in expected.items():
        assert got[kind] == pytest.approx(loss, rel=LOSS_TOLERANCE), kind


def test_each_rank_holds_and_reads_only_its_share(single, parallel):
    [alone] = single[1]
    # One process holds the whole model: what the measure sees when a start is not sharded.
    assert alone["peak_bytes"] >= alone["model_bytes"] == alone["local_bytes"]
    model = alone["model_bytes"]
    ranks = parallel[1]
    assert sum(rank["local_bytes"] for rank in ranks) >= model  # every weight has its place
    for rank in ranks:
        assert rank["local_bytes"] < 0.9 * model
        # Its own pieces, the pieces of the parameter being filled and the slices read for them.
        assert rank["peak_bytes"] <= rank["local_bytes"] + 4 * rank["largest_read"]
        # Only its own slices, the replicated weights and a mean over the embedding rows.
        assert rank["read_bytes"] <= rank["local_bytes"] + alone["largest_read"]
