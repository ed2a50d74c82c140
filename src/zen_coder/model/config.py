"""The model's shape and switches: one dataclass of plain fields, and named presets.

Presets:
    tiny            trains on a 2-core CPU in minutes (the quickstart)
    small           about 1B parameters active per token, for one GPU
    zen-coder-70b   the model card's dimensions: 80 blocks, width 8,192, 64 heads, 16 experts of
                    which 4 are active, vocabulary 128,000, context 128K

The card's four techniques are switches (`repo_embeddings`, `temporal_attention`,
`language_routing`, `contrastive_loss`), off by default: measured against their absence and
shuffled controls, none helped yet (docs/model.md). With all four off the model is a standard
Mixtral-style mixture of experts. docs/model.md explains the equations and the card's parameter
arithmetic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.settings import apply_overrides, parse_assignments

ROPE_SCALINGS = ("none", "linear", "llama3")
BALANCING = ("aux_loss", "bias")
ATTENTION = ("sdpa", "flex")


@dataclass(frozen=True)
class ModelConfig:
    # Shape.
    vocab_size: int = 4096
    context_length: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 0  # 0: d_model // n_heads
    n_experts: int = 16
    experts_per_token: int = 4
    expert_dim: int = 64
    norm_eps: float = 1e-5
    attention_bias: bool = False  # biases on the q, k, v projections (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys, before RoPE (Qwen3)
    tie_embeddings: bool = False

    # Rotary position embeddings; "llama3" is Llama 3.1's long-context frequency scaling.
    rope_theta: float = 500_000.0
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192

    # Routing and load balancing.
    router_renormalize: bool = True
    balancing: str = "aux_loss"  # "aux_loss" (Switch/Mixtral) or "bias" (DeepSeek-V3 style)
    balance_loss_weight: float = 0.01
    router_z_loss_weight: float = 0.001
    expert_bias_rate: float = 0.001

    # Attention over packed sequences.
    document_masking: bool = True  # attend only within the document (segment) of each token
    attention: str = "sdpa"  # "sdpa" (materialized masks) or "flex" (FlexAttention, long contexts)

    # The card's four techniques: off by default, each measured not to help (yet) against its
    # shuffled control and its absence (docs/model.md, benchmarks/history_ablation.py).
    repo_embeddings: bool = False
    n_repos: int = 1  # rows of the repository table; id 0 = unknown, kept at zero
    repo_dropout: float = 0.1
    temporal_attention: bool = False
    temporal_frequencies: int = 8  # terms of the learned Fourier series over temporal distance
    temporal_max_distance: int = 1024
    language_routing: bool = False
    # Rows of the language table, id 0 = unknown; train sets it from the data's table. The
    # default is the size of that table when the mining stage knew 32 languages.
    n_languages: int = 33
    contrastive_loss: bool = False
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.05

    init_std: float = 0.02

    def __post_init__(self) -> None:
        checks = [
            (self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"),
            (self.head_dim or self.d_model % self.n_heads == 0, "d_model must divide by n_heads"),
            (
                1 <= self.experts_per_token <= self.n_experts,
                "experts_per_token must be 1..n_experts",
            ),
            (self.rope_scaling in ROPE_SCALINGS, f"rope_scaling must be one of {ROPE_SCALINGS}"),
            (self.balancing in BALANCING, f"balancing must be one of {BALANCING}"),
            (self.attention in ATTENTION, f"attention must be one of {ATTENTION}"),
            (self.head_dimension % 2 == 0, "the head dimension must be even (rotary embeddings)"),
            (self.n_repos >= 1 and self.n_languages >= 1, "n_repos and n_languages start at 1"),
            (self.temporal_frequencies >= 1, "temporal_frequencies must be at least 1"),
            (
                self.d_model % 8 == 0 and self.expert_dim % 8 == 0,
                "d_model and expert_dim must be multiples of 8 (the grouped expert products "
                "need rows of a multiple of 16 bytes)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ZenCoderError(f"model setting: {message}")

    @property
    def head_dimension(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def techniques(self) -> dict[str, bool]:
        return {
            "repo_embeddings": self.repo_embeddings,
            "temporal_attention": self.temporal_attention,
            "language_routing": self.language_routing,
            "contrastive_loss": self.contrastive_loss,
        }

    def with_techniques(self) -> ModelConfig:
        """The same model with the card's four techniques on (their tables start at zero)."""
        return dataclasses.replace(self, **dict.fromkeys(self.techniques, True))

    def without_techniques(self) -> ModelConfig:
        """The same model as a standard Mixtral-style MoE: the card's four techniques off."""
        return dataclasses.replace(self, **dict.fromkeys(self.techniques, False))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "small": ModelConfig(
        vocab_size=32_768,
        context_length=4096,
        d_model=2048,
        n_layers=18,
        n_heads=16,
        n_kv_heads=4,
        n_experts=16,
        experts_per_token=4,
        expert_dim=1408,
    ),
    "zen-coder-70b": ModelConfig(
        vocab_size=128_000,
        context_length=131_072,
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        n_experts=16,
        experts_per_token=4,
        expert_dim=1792,
        rope_scaling="llama3",
        rope_factor=8.0,
        rope_original_context=8192,
        norm_eps=1e-5,
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ZenCoderError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def load_model_config(
    path: Path | None = None, assignments: list[str] | None = None, name: str = "tiny"
) -> ModelConfig:
    """A preset (the recipe's `[model] preset`, else `name`), then the recipe's other `[model]`
    fields, then `--set` values."""
    table: dict[str, Any] = {}
    if path is not None:
        table = dict(read_toml(path, "recipe").get("model", {}))
    config = preset(str(table.pop("preset", name)))
    config = apply_overrides(config, "model", table)
    return apply_overrides(config, "model", parse_assignments(assignments or []))
