"""`zen-coder train` itself under torchrun, as the README starts it: data-parallel (with full
activation checkpointing), tensor-parallel and 2-D (data 2 x tensor 2, with selective
checkpointing and FSDP's CPU offload) runs of the real trainer, gloo on CPU, against one process
on the same recipe, steps and seed.

Each layout is one launch shared by its tests. They compare the per-step training and
validation losses (metrics.jsonl), every exported weight and the exported model's logits on a
fixed batch. Measured by hand (torch 2.13, 2-core CPU): the parallel runs are within 4.1e-8 of
one process in the losses, 3.0e-3 in a weight (the temporal tables, which start at zero, so
AdamW's first steps move them by the sign of near-zero gradients) and 7.7e-7 in the logits
(data parallelism alone is exact). Broken on purpose they exceed the tolerances: with the
row-wise attention output left un-reduced (tensor parallel, one missing all-reduce) the losses
are off by 5.8e-3, the median weight by 0.13 and the logits by 0.28; with both data-parallel
ranks reading rank 0's share of the batch, by 3.4e-3, 0.14 and 0.38.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.model.compare import relative_error, worst
from tests.training.test_train import FAST, ROOT, configs
from zen_coder.model.folder import load_model
from zen_coder.training.metrics import read_metrics
from zen_coder.training.trainer import train

# Repository dropout draws per sequence from each data-parallel rank's own seed: off, so that
# every layout draws the same (none).
RECIPE = ["train.steps=3", "model.repo_dropout=0"]
LOSS_TOLERANCE, WEIGHT_TOLERANCE, LOGITS_TOLERANCE = 1e-5, 1e-2, 1e-4
# Processes, tensor-parallel ranks and the recipe's other parallel switches, which change how
# the run computes, never what.
LAYOUTS = {
    "data_parallel": (2, 1, ["train.activation_checkpointing=full"]),
    "tensor_parallel": (2, 2, []),
    "both": (4, 2, ["train.activation_checkpointing=selective", "train.cpu_offload=true"]),
}


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train(data, out, *configs(*RECIPE))
    return out


@pytest.fixture(scope="module", params=list(LAYOUTS))
def parallel(request, data, tmp_path_factory) -> Path:
    """One torchrun launch of `python -m zen_coder.training` per layout."""
    processes, tensor_parallel, switches = LAYOUTS[request.param]
    out = tmp_path_factory.mktemp(request.param) / "run"
    arguments = ["--data", str(data), "--out", str(out), "--quiet"]
    arguments += ["--config", str(ROOT / "configs" / "tiny.toml")]
    for setting in [*FAST, *RECIPE, f"train.tensor_parallel={tensor_parallel}", *switches]:
        arguments += ["--set", setting]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), "-m", "zen_coder.training", *arguments]
    # GPUs hidden: gloo on CPU on any machine, like the single-process reference.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return out


def losses(run: Path, kind: str) -> dict[int, float]:
    return {event["step"]: event["loss"] for event in read_metrics(run) if event["kind"] == kind}


@pytest.mark.parametrize("kind", ["train", "validation"])
def test_the_losses_are_one_process_losses(single, parallel, kind):
    expected, got = losses(single, kind), losses(parallel, kind)
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=LOSS_TOLERANCE), f"{kind} step {step}"


def test_the_exported_model_is_the_one_process_model(single, parallel):
    expected = load_file(single / "model" / "model.safetensors")
    got = load_file(parallel / "model" / "model.safetensors")
    assert got.keys() == expected.keys()
    name, error = worst({name: relative_error(got[name], expected[name]) for name in expected})
    assert error < WEIGHT_TOLERANCE, f"{name} off by {error:.1e}"
    reference, model = load_model(single / "model"), load_model(parallel / "model")
    batch = fixed_batch(reference.config.vocab_size)
    with torch.no_grad():
        error = relative_error(model(**batch).logits, reference(**batch).logits)
    assert error < LOGITS_TOLERANCE, f"logits off by {error:.1e}"


def fixed_batch(vocabulary: int) -> dict[str, torch.Tensor]:
    """Tokens with every side channel, so that the technique tables take part in the logits."""
    generator = torch.Generator().manual_seed(0)
    shape = (2, 32)
    return {
        "tokens": torch.randint(0, vocabulary, shape, generator=generator),
        "repo": torch.ones(shape, dtype=torch.long),
        "language": torch.ones(shape, dtype=torch.long),
        "time": torch.randint(0, 1000, shape, generator=generator).sort(dim=1).values,
    }
