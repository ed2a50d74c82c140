"""LoRA: low-rank adapters on a frozen base, applied to a built model from outside.

Like parallelism (`parallelize.py`), LoRA is applied to the model and the model code knows
nothing of it. Each target weight W keeps its parameter and its name and gains an adapter, two
small matrices A (rank x in, random) and B (out x rank, zero), so the layer computes

    W x + s B A dropout(x),   s = alpha / rank.

B starts at zero: the adapted model starts as the base, exactly. `apply_lora` freezes every
parameter of the base but what `LoraConfig.trainable` names, so gradients, optimizer state and
checkpoints hold only the adapters and those (the memory planner counts only parameters with
requires_grad: apply LoRA before `parallelize` and it sees the savings).

- Attention projections (nn.Linear q, k, v, o): a forward hook adds the adapter's output. The
  module stays a plain nn.Linear with its weight's name (`blocks.0.attention.q.weight`); the
  adapter sits beside it (`blocks.0.attention.q.lora.weight.a` and `.b`).
- Experts (stacked w1, w3 [E, F, D] and w2 [E, D, F]): one adapter per expert, stacked (A
  [E, r, in], B [E, out, r]), run on the routed token groups by grouped matrix products like
  the experts themselves: two thin products per projection, and the frozen weight's gradient
  is never formed. Adding s B A to the weight on the fly instead forms that gradient (a full
  weight's product per projection and step) and cannot drop out the adapter's input alone;
  benchmarks/lora_experts.py measures both.

`merge_weights` folds each adapter into its weight (W + s B A) in a state dict: the exported
model folder and Hugging Face checkpoint hold plain weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zen_coder.model.model import Experts, ZenCoder, local_part
from zen_coder.training.config import LoraConfig

ATTENTION = ("q", "k", "v", "o")
EXPERT_WEIGHTS = ("w1", "w2", "w3")
# CUDA's grouped products want every row of their operands a multiple of 16 bytes: the rank
# dimension of the expert adapters is padded with zeros to a multiple of 8 (bfloat16) when the
# rank is not one (seen on an H200: rank 4 fails "strides should be multiple of 16 bytes").
RANK_ALIGN = 8
# The technique tables inside the blocks; the repository embedding and the contrastive projection
# are modules of the model itself (`repo`, `projection`).
_TECHNIQUE_TABLES = ("attention.temporal.weight", "moe.language")
# An adapter's parameters in a state dict: MODULE.lora.WEIGHT.a and .b adapt MODULE.WEIGHT.
_ADAPTER = re.compile(r"^(?P<module>.*)\.lora\.(?P<weight>\w+)\.(?P<factor>[ab])$")


class Adapter(nn.Module):
    """The low-rank update s B A of one weight: [out, in], or stacked per expert [E, out, in]."""

    def __init__(self, weight: Tensor, lora: LoraConfig) -> None:
        super().__init__()
        *experts, out_features, in_features = weight.shape
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.a = nn.Parameter(torch.empty(*experts, lora.rank, in_features, **factory))
        self.b = nn.Parameter(torch.empty(*experts, out_features, lora.rank, **factory))
        self.scale = lora.scale
        self.dropout = nn.Dropout(lora.dropout)
        self.reset_parameters()

    def initial_distribution(self, name: str) -> tuple[float, float]:
        """The (mean, std) factor `name` starts from: A with the variance nn.Linear gives a
        weight of its shape (uniform within 1/sqrt(in), std 1/sqrt(3 in)), but normal, the
        distribution a model started on the meta device draws each rank's shards from
        (`zen_coder.model.weights`); B at zero, so the adapter starts as a no-op."""
        if name == "a":
            return 0.0, 1 / math.sqrt(3 * self.a.shape[-1])
        return 0.0, 0.0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, factor in (("a", self.a), ("b", self.b)):
            mean, std = self.initial_distribution(name)
            nn.init.normal_(factor, mean, std) if std else nn.init.constant_(factor, mean)

    def forward(self, x: Tensor) -> Tensor:
        """The update of a linear layer's output: x [..., in] -> [..., out]."""
        return F.linear(F.linear(self.dropout(x), self.a), self.b) * self.scale

    def grouped(self, x: Tensor, ends: Tensor) -> Tensor:
        """The update of the experts' output: x [rows, in] grouped by expert as the experts
        take it (group e ends at row ends[e]) -> [rows, out], in x's dtype."""
        a, b = self.a.to(x.dtype), self.b.to(x.dtype)
        spare = -a.shape[-2] % RANK_ALIGN
        if spare:  # zero rank rows and columns: the same products, with aligned strides
            a, b = F.pad(a, (0, 0, 0, spare)), F.pad(b, (0, spare))
        low = torch._grouped_mm(self.dropout(x), a.transpose(1, 2), offs=ends)
        return torch._grouped_mm(low, b.transpose(1, 2), offs=ends) * self.scale


class LoraExperts(Experts):
    """The experts with adapters: Experts.forward's SwiGLU, each projection plus its adapter's
    grouped products. `apply_lora` gives an Experts module this class in place, so it keeps its
    parameters, their names and whatever else it holds."""

    lora: nn.ModuleDict

    def forward(self, routed: Tensor, ends: Tensor) -> Tensor:
        gate = self._project("w1", routed, ends)
        up = self._project("w3", routed, ends)
        return self._project("w2", F.silu(gate) * up, ends)

    def _project(self, name: str, x: Tensor, ends: Tensor) -> Tensor:
        weight = local_part(getattr(self, name))
        out = torch._grouped_mm(x, weight.to(x.dtype).transpose(1, 2), offs=ends)
        if name in self.lora:
            out = out + self.lora[name].grouped(x, ends)
        return out


def apply_lora(
    model: ZenCoder, lora: LoraConfig, frozen_dtype: torch.dtype | None = None
) -> ZenCoder:
    """Freeze `model` but what `lora.trainable` names and give each target an adapter, in
    place (before `parallelize`, which then shards the adapters with their blocks). LoRA off
    (rank 0): the model as it is.

    With `frozen_dtype` (bfloat16, for a run in bfloat16) the frozen matrices are stored in it:
    they only feed a forward that computes in it anyway, so the frozen base takes half the
    memory. The token embedding stays float32 (its rows start the residual stream, which
    stays float32), as do the norms and everything that trains."""
    if not lora.enabled:
        return model
    model.requires_grad_(False)
    attention = [name for name in lora.targets if name in ATTENTION]
    experts = [name for name in lora.targets if name in EXPERT_WEIGHTS]
    for block in model.blocks:
        for name in attention:
            _adapt_linear(getattr(block.attention, name), lora)
        if experts:
            _adapt_experts(block.moe.experts, experts, lora)
    for name, parameter in model.named_parameters():
        if trainable_kind(name) in lora.trainable:
            parameter.requires_grad_(True)
    if frozen_dtype is not None:
        _store_frozen(model, frozen_dtype)
    return model


def _store_frozen(model: ZenCoder, dtype: torch.dtype) -> None:
    embedding = model.embed.weight
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.dim() >= 2 and parameter is not embedding:
            parameter.data = parameter.data.to(dtype)  # in place: a tied pair stays one


def trainable_kind(name: str) -> str | None:
    """Which of `LoraConfig.trainable`'s kinds a parameter of the base belongs to, if any."""
    module = name.rpartition(".")[0]
    if module.endswith("moe.router"):
        return "router"
    if module in ("repo", "projection") or name.endswith(_TECHNIQUE_TABLES):
        return "techniques"
    if module.endswith("norm"):
        return "norms"
    if module in ("embed", "head"):
        return "embeddings"
    return None


def _adapt_linear(module: nn.Linear, lora: LoraConfig) -> None:
    module.lora = nn.ModuleDict({"weight": Adapter(module.weight, lora)})
    module.register_forward_hook(_add_adapter)


def _add_adapter(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return output + module.lora["weight"](inputs[0])


def _adapt_experts(experts: Experts, names: list[str], lora: LoraConfig) -> None:
    experts.__class__ = LoraExperts
    experts.lora = nn.ModuleDict({name: Adapter(getattr(experts, name), lora) for name in names})


def is_adapter(name: str) -> bool:
    """Whether a state-dict entry is an adapter's factor (A or B)."""
    return _ADAPTER.match(name) is not None


@torch.no_grad()
def merge_weights(weights: Mapping[str, Tensor], lora: LoraConfig) -> dict[str, Tensor]:
    """A full state dict of an adapted model as the plain model's: each adapted weight W
    becomes W + s B A (computed in float32, stored in W's dtype), the adapters are gone."""
    merged = {name: tensor for name, tensor in weights.items() if not is_adapter(name)}
    for name in weights:
        match = _ADAPTER.match(name)
        if match is None or match["factor"] != "a":
            continue
        prefix = f"{match['module']}.lora.{match['weight']}"
        target = f"{match['module']}.{match['weight']}"
        a, b = weights[f"{prefix}.a"].float(), weights[f"{prefix}.b"].float()
        weight = weights[target]
        merged[target] = (weight.float() + lora.scale * (b @ a)).to(weight.dtype)
    return merged
