"""Parameter counts and FLOPs of a configuration, from the model built on the meta device."""

from __future__ import annotations

import torch

from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Total, active-per-token, expert and embedding parameters; no memory is allocated.

    Active parameters are all but the experts a token does not use: (E - k) / E of them.
    """
    with torch.device("meta"):
        model = ZenCoder(config)
    total = sum(parameter.numel() for parameter in model.parameters())
    experts = sum(
        parameter.numel() for block in model.blocks for parameter in block.moe.experts.parameters()
    )
    unused = experts * (config.n_experts - config.experts_per_token) // config.n_experts
    embedding = model.embed.weight.numel() + (model.repo.weight.numel() if model.repo else 0)
    return {"total": total, "active": total - unused, "experts": experts, "embedding": embedding}


def flops_per_token(config: ModelConfig, counts: dict[str, int] | None = None) -> dict[str, int]:
    """Matmul FLOPs per token at full context, as PaLM counts them.

    Forward: 2N + 4·L·H·Hd·T, N the active parameters that multiply (embedding lookups excluded);
    training: three times the forward.
    """
    counts = counts or parameter_counts(config)
    multiplying = counts["active"] - counts["embedding"]
    attention = 4 * config.n_layers * config.n_heads * config.head_dimension * config.context_length
    forward = 2 * multiplying + attention
    return {"forward": forward, "training": 3 * forward}
