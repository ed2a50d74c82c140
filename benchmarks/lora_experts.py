"""How LoRA should run the experts: grouped adapter products, or the adapter merged on the fly.

An expert projection with an adapter computes x (W + s B A)^T for each expert's tokens. Two ways:

- grouped: the experts' grouped product with the frozen W, plus two thin grouped products
  through A and B (what `zen_coder.training.lora.LoraExperts` does);
- merged: form W + s B A (a bmm per projection) and run one grouped product with it.

Both train only A and B. The script times forward + backward of the experts (w1, w3, w2 with
SwiGLU between) on the same routed rows, in the same process, against the frozen experts with
no adapter (the baseline: the least any LoRA can cost) and against full fine-tuning (W trains),
and counts the bytes autograd saves for backward in each. It checks that both ways compute the
same output first. Weights are float32 (master weights), the rows `--dtype` (bfloat16 is what
a GPU run computes in; CUDA's grouped products take nothing else).

    python benchmarks/lora_experts.py [--experts 8] [--width 512] [--expert-width 384]
                                      [--rows 4096] [--rank 16] [--repeats 7]
    python benchmarks/lora_experts.py --device cuda --dtype bfloat16 --experts 16 \
        --width 2048 --expert-width 1408 --rows 16384      # the small preset's experts
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from zen_coder.model.model import Experts, MoE
from zen_coder.training.config import LoraConfig
from zen_coder.training.lora import EXPERT_WEIGHTS, apply_lora


class MergedExperts(Experts):
    """The alternative: each adapted weight merged on the fly, W + s B A, then one product."""

    def forward(self, routed: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        def weight(name: str) -> torch.Tensor:
            adapter = self.lora[name]
            merged = getattr(self, name) + adapter.scale * (adapter.b @ adapter.a)
            return merged.to(routed.dtype).transpose(1, 2)

        gate = torch._grouped_mm(routed, weight("w1"), offs=ends)
        up = torch._grouped_mm(routed, weight("w3"), offs=ends)
        return torch._grouped_mm(F.silu(gate) * up, weight("w2"), offs=ends)


def build(args: argparse.Namespace, kind: str) -> Experts:
    """The experts of one block, as the baseline (frozen), full fine-tuning, or with adapters."""
    torch.manual_seed(0)
    experts = Experts(args.experts, args.width, args.expert_width).to(args.device)
    for name in EXPERT_WEIGHTS:
        torch.nn.init.normal_(getattr(experts, name), std=0.02)
    experts.requires_grad_(kind == "full")
    if kind in ("grouped", "merged"):
        holder = torch.nn.Module()  # apply_lora adapts a model's blocks: give it one
        holder.blocks = torch.nn.ModuleList([torch.nn.Module()])
        holder.blocks[0].attention = torch.nn.Module()
        holder.blocks[0].moe = torch.nn.Module()
        holder.blocks[0].moe.experts = experts
        lora = LoraConfig(rank=args.rank, alpha=2 * args.rank, targets=EXPERT_WEIGHTS)
        apply_lora(holder, lora)
        with torch.no_grad():
            for adapter in experts.lora.values():
                adapter.b.normal_(std=0.02)  # trained adapters: B is no longer zero
        if kind == "merged":
            experts.__class__ = MergedExperts
    return experts


def routed_rows(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows grouped by expert, each group a multiple of MoE.GROUP_ALIGN, as training has them."""
    per_expert = args.rows // args.experts // MoE.GROUP_ALIGN * MoE.GROUP_ALIGN
    ends = torch.arange(1, args.experts + 1, dtype=torch.int32, device=args.device) * per_expert
    dtype = getattr(torch, args.dtype)
    rows = torch.randn(int(ends[-1]), args.width, device=args.device, dtype=dtype)
    return rows.requires_grad_(), ends


def step(experts: Experts, x: torch.Tensor, ends: torch.Tensor) -> int:
    """Forward and backward; returns the bytes autograd saved for the backward, but the
    parameters themselves (the backward reads them, they take no memory of their own)."""
    parameters = {parameter.untyped_storage().data_ptr() for parameter in experts.parameters()}
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = experts(x, ends)
    out.float().square().mean().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return sum(saved)


def measure(args: argparse.Namespace, kinds: tuple[str, ...]) -> dict[str, tuple[float, int]]:
    """Each kind's median time and saved bytes, the kinds interleaved step by step so that a
    busy moment of a shared machine falls on all of them alike."""
    x, ends = routed_rows(args)
    built = {kind: build(args, kind) for kind in kinds}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    saved = {kind: step(built[kind], x, ends) for kind in kinds}  # and a warm-up
    for _ in range(args.repeats):
        for kind in kinds:
            start = time.perf_counter()
            step(built[kind], x, ends)
            times[kind].append(time.perf_counter() - start)
    return {kind: (statistics.median(times[kind]), saved[kind]) for kind in kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--expert-width", type=int, default=384)
    parser.add_argument("--rows", type=int, default=4096, help="routed rows (tokens x k)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    x, ends = routed_rows(args)
    with torch.no_grad():
        grouped, merged = build(args, "grouped")(x, ends), build(args, "merged")(x, ends)
    error = float((grouped - merged).abs().max() / merged.abs().max())
    print(f"grouped and merged outputs differ by {error:.1e} of the largest (rounding only)")
    print(
        f"{args.device}, {args.dtype}: experts {args.experts}, width {args.width}, expert width "
        f"{args.expert_width}, {int(ends[-1])} routed rows, rank {args.rank}; forward + "
        f"backward, median of {args.repeats}"
    )
    labels = {
        "frozen": "frozen experts, no adapter",
        "grouped": "LoRA, grouped adapter products",
        "merged": "LoRA, merged on the fly",
        "full": "full fine-tuning (W trains)",
    }
    results = measure(args, tuple(labels))
    baseline = results["frozen"][0]
    print(f"{'variant':<34}{'ms':>9}{'x frozen':>10}{'saved MB':>10}")
    for kind, label in labels.items():
        seconds, saved = results[kind]
        print(f"{label:<34}{seconds * 1e3:>9.1f}{seconds / baseline:>10.2f}{saved / 1e6:>10.1f}")


if __name__ == "__main__":
    main()
