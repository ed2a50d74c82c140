"""Data, tensor and 2-D parallelism train exactly like one process; the sharding plan's shapes.

The parallel runs go through torchrun (tests/training/parallel_run.py, gloo on CPU), one launch
per layout shared by its tests; the reference is the same loop on the same global batches here.
Under data parallelism each rank's loss covers its half of the batch (the balance and
contrastive losses depend on which sequences share a batch), so the reference averages the
losses of the two halves, which is what averaging gradients over ranks computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from tests.training.parallel_run import build_model, global_batches, share, train
from zen_coder.errors import ZenCoderError
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder
from zen_coder.training.parallelize import (
    Distributed,
    init_distributed,
    parallelize,
    shutdown,
)

SCRIPT = Path(__file__).with_name("parallel_run.py")
GLOO_ABORT = "terminate called without an active exception"
SHARD_ROWS, SHARD_COLUMNS = "Shard(dim=0)", "Shard(dim=1)"


def launch(folder: Path, processes: int, tensor_parallel: int, *flags: str) -> dict:
    out = folder / "report.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", str(SCRIPT)]
    command += [f"--tensor-parallel={tensor_parallel}", *flags, str(out)]
    # GPUs hidden: the runs take the CPU and gloo path on any machine, as the reference here
    # does, and a machine with fewer GPUs than ranks cannot fail them.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0 and GLOO_ABORT in result.stderr:
        # Rarely (one of the last four CI runs here) a gloo worker thread aborts a rank with
        # std::terminate; the same launch then passes. Tracked as a follow-up, not hidden twice.
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("dp"), 2, 1, "--bfloat16")


@pytest.fixture(scope="module")
def tensor_parallel(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("tp"), 2, 2, "--bfloat16")


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("dp_tp"), 4, 2)


def reference(parts: int) -> torch.Tensor:
    """Per-step losses in this process, each step's global batch cut into `parts` shares."""
    steps = [[share(batch, part, parts) for part in range(parts)] for batch in global_batches()]
    return torch.stack(train(build_model(), steps))


def assert_same_losses(report: dict, parts: int) -> None:
    got = torch.tensor(report["losses"])
    torch.testing.assert_close(got, reference(parts), rtol=1e-5, atol=0)


def test_data_parallel_trains_like_one_process(data_parallel):
    assert_same_losses(data_parallel, parts=2)


def test_tensor_parallel_trains_like_one_process(tensor_parallel):
    assert_same_losses(tensor_parallel, parts=1)


def test_data_and_tensor_parallel_together_train_like_one_process(both):
    assert_same_losses(both, parts=2)


@pytest.mark.parametrize(
    ("layout", "dp_ranks"),
    [("data_parallel", [0, 1]), ("tensor_parallel", [0, 0]), ("both", [0, 0, 1, 1])],
)
def test_each_rank_knows_its_share(layout, dp_ranks, request):
    report = request.getfixturevalue(layout)
    ranks = report["ranks"]
    assert report["mesh"] == ["dp", "tp"]
    assert [rank["rank"] for rank in ranks] == list(range(len(dp_ranks)))
    assert [rank["dp_rank"] for rank in ranks] == dp_ranks
    assert {rank["dp_size"] * rank["tp_size"] for rank in ranks} == {len(dp_ranks)}
    assert [rank["is_main"] for rank in ranks] == [True] + [False] * (len(dp_ranks) - 1)


def test_tensor_parallel_splits_attention_by_heads(tensor_parallel):
    plan = tensor_parallel["plan"]
    for name, entry in plan.items():
        layer = name.rsplit(".", 1)[0]
        if layer.endswith(("attention.q", "attention.k", "attention.v", "attention.temporal")):
            assert entry["placements"] == [SHARD_ROWS], name
            assert entry["local_shape"] == [entry["shape"][0] // 2, *entry["shape"][1:]], name
        elif layer.endswith("attention.o"):
            assert entry["placements"] == [SHARD_COLUMNS], name
            assert entry["local_shape"] == [entry["shape"][0], entry["shape"][1] // 2], name
        else:  # the MoE, embeddings, norms, head: replicated, plain tensors
            assert "placements" not in entry, name
            assert entry["local_shape"] == entry["shape"], name
    assert "blocks.1.attention.temporal.weight" in plan


def test_fsdp_shards_every_parameter_over_dp(data_parallel):
    for name, entry in data_parallel["plan"].items():
        assert (entry["mesh"], entry["placements"]) == (["dp"], [SHARD_ROWS]), name
        assert entry["local_shape"][0] == -(-entry["shape"][0] // 2), name  # rank 0's rows


def test_fsdp_shards_tensor_parallel_shards_further(both):
    plan = both["plan"]
    q, o = plan["blocks.0.attention.q.weight"], plan["blocks.0.attention.o.weight"]
    assert q["mesh"] == o["mesh"] == ["dp", "tp"]
    assert q["local_shape"] == [q["shape"][0] // 4, q["shape"][1]]
    assert o["placements"] == [SHARD_ROWS, SHARD_COLUMNS]
    assert o["local_shape"] == [o["shape"][0] // 2, o["shape"][1] // 2]
    expert = plan["blocks.0.moe.w1"]
    assert (expert["mesh"], expert["placements"]) == (["dp"], [SHARD_ROWS])


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_weights(data_parallel):
    step = data_parallel["bfloat16"]
    assert step["compute_dtype"] == "torch.bfloat16"
    assert step["weight_dtype"] == step["grad_dtype"] == "torch.float32"
    assert torch.isfinite(torch.tensor(step["loss"]))


@pytest.mark.parametrize("layout", ["data_parallel", "tensor_parallel"])
def test_compiled_blocks_run_sharded_and_compute_the_same_loss(layout, request):
    step = request.getfixturevalue(layout)["bfloat16"]
    assert step["compiled_loss"] == pytest.approx(step["loss"], rel=1e-2)


def test_alone_it_is_rank_zero_of_one_and_changes_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = init_distributed()
    assert (dist.rank, dist.world_size, dist.dp_rank, dist.dp_size, dist.tp_size) == (0, 1, 0, 1, 1)
    assert dist.mesh is None and dist.is_main
    assert dist.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model()
    assert parallelize(model, dist) is model
    assert not any(hasattr(parameter, "placements") for parameter in model.parameters())
    shutdown(dist)


def test_compiled_blocks_compute_what_eager_blocks_do():
    """Every block compiles whole (a graph break would fail), all share one graph, and the
    compiled model's loss and gradients are the eager model's, under bfloat16 autocast."""
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = build_model(), build_model()
    dist = Distributed(0, 1, 0, 0, 1, 1, torch.device("cpu"), mesh=None)
    parallelize(compiled, dist, compile=True)
    batch = dict(global_batches()[0])
    tokens = batch.pop("tokens")
    losses, gradients = [], []
    for model in (eager, compiled):
        torch.manual_seed(0)  # the same repository dropout
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(tokens, **batch).loss
        loss.backward()
        losses.append(loss.item())
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert counters["stats"]["unique_graphs"] == 1
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    error = (gradients[0] - gradients[1]).norm() / gradients[0].norm()
    assert error < 0.05


@pytest.mark.parametrize("tensor_parallel", [0, 2])
def test_tensor_parallel_must_divide_the_ranks(monkeypatch, tensor_parallel):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ZenCoderError, match=f"tensor_parallel={tensor_parallel} must"):
        init_distributed(tensor_parallel)


def test_tensor_parallel_must_divide_the_heads():
    model = ZenCoder(ModelConfig(vocab_size=64, n_layers=1, n_heads=4, n_kv_heads=1))
    dist = Distributed(0, 2, 0, 0, 1, 2, torch.device("cpu"), mesh=None)
    with pytest.raises(ZenCoderError, match="must divide model n_kv_heads=1"):
        parallelize(model, dist)
