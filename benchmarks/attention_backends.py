"""Do the GPU's attention kernels give the gradients the reference does, under document masking?

One small model, one packed batch (two documents per sequence, temporal features on), one
forward and backward per attention path: SDPA's cuDNN, memory-efficient and math kernels and
FlexAttention, in bf16 autocast, against the math kernel in fp32. Prints the loss and the relative
gradient error of each (a kernel that drops the mask's effect in backward shows here as an error
far above bf16's ~1e-2).

    python benchmarks/attention_backends.py          # on a GPU
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import batch

from zen_coder.model.config import preset
from zen_coder.model.model import ZenCoder


def gradients(config, inputs, attention, backend, dtype) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    model = ZenCoder(dataclasses.replace(config, attention=attention)).cuda().eval()
    inputs = dict(inputs)
    tokens = inputs.pop("tokens")
    kernel = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with kernel, autocast:
        loss = model(tokens, **inputs).loss
    loss.backward()
    flat = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), flat


def main() -> None:
    config = dataclasses.replace(preset("small"), n_repos=8, n_layers=2, context_length=4096)
    inputs = batch(config, 2, 4096, torch.device("cuda"))
    reference_loss, reference = gradients(config, inputs, "sdpa", SDPBackend.MATH, torch.float32)
    print(f"reference (math kernel, fp32): loss {reference_loss:.4f}")
    paths = [
        ("sdpa cudnn", "sdpa", SDPBackend.CUDNN_ATTENTION),
        ("sdpa efficient", "sdpa", SDPBackend.EFFICIENT_ATTENTION),
        ("sdpa math", "sdpa", SDPBackend.MATH),
        ("sdpa default", "sdpa", None),
        ("flex", "flex", None),
    ]
    for label, attention, backend in paths:
        try:
            loss, grad = gradients(config, inputs, attention, backend, torch.bfloat16)
        except RuntimeError as error:
            print(f"{label} (bf16): unavailable: {str(error).splitlines()[0][:120]}")
            continue
        error = float((grad - reference).norm() / reference.norm())
        print(f"{label} (bf16): loss {loss:.4f}, relative gradient error {error:.4f}")


if __name__ == "__main__":
    main()
