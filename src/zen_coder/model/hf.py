"""Hugging Face interop: load Llama, Mistral, Qwen2, Qwen3, Mixtral and Qwen3-MoE checkpoints,
save as Llama, Qwen2, Qwen3, Mixtral or Qwen3-MoE.

A Hugging Face model folder is `config.json` plus safetensors weights (one `model.safetensors`,
or shards listed by `model.safetensors.index.json`). With the card's four techniques off the
native model computes exactly what these families compute, so conversion is renaming tensors and
stacking experts:

    config_from_hf(json.load(...))        config.json -> ModelConfig (techniques off)
    load_pretrained(folder)                dense checkpoint -> one-expert model, MoE -> MoE
    load_pretrained(folder, experts=16)    dense checkpoint -> sparse-upcycled MoE
    save_pretrained(model, folder)         the family that holds the model (_export_architecture)

Loading reads the weights tensor by tensor (`zen_coder.model.weights`, which also starts a
sharded model from them, each rank reading its own slices) and needs no `transformers`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from zen_coder.errors import ZenCoderError
from zen_coder.files import write_atomic, write_json_atomic
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder
from zen_coder.model.weights import (
    Checkpoint,
    Initial,
    Shifted,
    Source,
    Stacked,
    Stored,
    Upcycled,
    build,
    grow_vocabulary,
)
from zen_coder.settings import apply_overrides

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
MAX_SHARD_BYTES = 5_000_000_000  # what transformers shards at by default
UPCYCLE = ("copy", "slice")
UPCYCLED_EXPERTS_PER_TOKEN = 4  # the card's choice: 4 of 16 experts active


@dataclass(frozen=True)
class Family:
    model_type: str
    rope_theta: float  # what transformers assumes when config.json leaves rope_theta out
    layout: str = "dense"  # the FEED_FORWARD_WEIGHTS names transformers writes the family in
    attention_bias: bool = False  # always biases on q, k and v, never on o (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (Qwen3)
    head_dim: int | None = None  # what transformers assumes when config.json leaves it out
    expert_dim: str = "intermediate_size"  # config.json's field for an expert's width
    # config.json's switch for renormalizing the top-k routing weights, and what transformers
    # assumes without it; None: the family always renormalizes.
    renormalize: tuple[str, bool] | None = None

    @property
    def moe(self) -> bool:
        return self.layout != "dense"


FAMILIES = {
    "LlamaForCausalLM": Family("llama", 10_000.0),
    "MistralForCausalLM": Family("mistral", 10_000.0),
    "Qwen2ForCausalLM": Family("qwen2", 10_000.0, attention_bias=True),
    "Qwen3ForCausalLM": Family("qwen3", 10_000.0, qk_norm=True, head_dim=128),
    "MixtralForCausalLM": Family("mixtral", 1_000_000.0, layout="mixtral"),
    "Qwen3MoeForCausalLM": Family(
        "qwen3_moe",
        10_000.0,
        layout="qwen3_moe",
        qk_norm=True,
        expert_dim="moe_intermediate_size",
        renormalize=("norm_topk_prob", False),
    ),
}

# Hugging Face name -> native name; {i} is the layer, {j} the expert. RoPE is rotate-half in both
# (Hugging Face's conversion already permuted Meta's interleaved q/k rows), so q and k copy as
# they are. The feed-forward part depends on the checkpoint's layout.
SHARED_WEIGHTS = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "head.weight",
    "model.layers.{i}.input_layernorm.weight": "blocks.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attention.q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attention.k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attention.v.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attention.q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attention.k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attention.v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attention.o.weight",
    "model.layers.{i}.self_attn.q_norm.weight": "blocks.{i}.attention.q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blocks.{i}.attention.k_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.moe_norm.weight",
}
FEED_FORWARD_WEIGHTS: dict[str, dict[str, str | tuple[str, str]]] = {
    # Llama, Mistral, Qwen2, Qwen3: one SwiGLU MLP, loaded as every expert (or sliced among them).
    "dense": {
        "model.layers.{i}.mlp.gate_proj.weight": "blocks.{i}.moe.experts.w1",
        "model.layers.{i}.mlp.up_proj.weight": "blocks.{i}.moe.experts.w3",
        "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.moe.experts.w2",
    },
    # Mixtral as transformers (4.x and 5.x) writes it: one tensor per expert.
    "mixtral": {
        "model.layers.{i}.block_sparse_moe.gate.weight": "blocks.{i}.moe.router.weight",
        "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight": "blocks.{i}.moe.experts.w1",
        "model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight": "blocks.{i}.moe.experts.w3",
        "model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight": "blocks.{i}.moe.experts.w2",
    },
    # Qwen3-MoE as transformers (4.x and 5.x) writes it: one tensor per expert, no shared expert.
    "qwen3_moe": {
        "model.layers.{i}.mlp.gate.weight": "blocks.{i}.moe.router.weight",
        "model.layers.{i}.mlp.experts.{j}.gate_proj.weight": "blocks.{i}.moe.experts.w1",
        "model.layers.{i}.mlp.experts.{j}.up_proj.weight": "blocks.{i}.moe.experts.w3",
        "model.layers.{i}.mlp.experts.{j}.down_proj.weight": "blocks.{i}.moe.experts.w2",
    },
    # Mixtral and Qwen3-MoE as transformers 5.x holds them in memory (a raw state_dict saved as
    # is): experts stacked, gate and up concatenated along the width.
    "fused": {
        "model.layers.{i}.mlp.gate.weight": "blocks.{i}.moe.router.weight",
        "model.layers.{i}.mlp.experts.gate_up_proj": (
            "blocks.{i}.moe.experts.w1",
            "blocks.{i}.moe.experts.w3",
        ),
        "model.layers.{i}.mlp.experts.down_proj": "blocks.{i}.moe.experts.w2",
    },
}

# Native tensors no Hugging Face format holds, by the part of the model they belong to (a
# technique's switch, or the experts' balancing bias). The contrastive projection
# (projection.weight) only shapes training, so dropping it loses nothing.
NATIVE_ONLY = {
    "repo.weight": "repo_embeddings",
    "blocks.{i}.attention.temporal.weight": "temporal_attention",
    "blocks.{i}.moe.language": "language_routing",
    "blocks.{i}.moe.expert_bias": "expert_bias",
}
PARTS = {
    "repo_embeddings": "repository embeddings",
    "temporal_attention": "temporal attention",
    "language_routing": "language routing",
    "contrastive_loss": "contrastive loss",
    "expert_bias": "expert bias",
}
EXPORT_FIELD = "zen_coder_export"  # config.json: what the native model had, what was dropped
MODEL_CARD = "README.md"


@dataclass(frozen=True)
class Target:
    """The native parameter(s) one checkpoint tensor fills."""

    native: tuple[str, ...]  # two names: the tensor is both, concatenated along dim 1
    expert: int | None = None  # fills this expert's slice of a stacked expert parameter
    spread: bool = False  # a dense MLP matrix, spread over the experts (upcycling)


# -- config.json --------------------------------------------------------------------------------


def config_from_hf(hf_config: dict, **overrides: Any) -> ModelConfig:
    """The native config of a Hugging Face `config.json`, with the card's techniques off (the
    checkpoint was trained without them) and `overrides` (ModelConfig fields) applied last."""
    architecture = _architecture(hf_config)
    family = FAMILIES[architecture]
    _check_supported(hf_config, family)
    fields = {
        "vocab_size": _field(hf_config, "vocab_size"),
        "context_length": _context_length(hf_config),
        "d_model": _field(hf_config, "hidden_size"),
        "n_layers": _field(hf_config, "num_hidden_layers"),
        "n_heads": _field(hf_config, "num_attention_heads"),
        "n_kv_heads": hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"],
        "head_dim": hf_config.get("head_dim") or family.head_dim or 0,
        "n_experts": _experts(hf_config) if family.moe else 1,
        "experts_per_token": _field(hf_config, "num_experts_per_tok") if family.moe else 1,
        "expert_dim": _field(hf_config, family.expert_dim),
        "norm_eps": _field(hf_config, "rms_norm_eps"),
        "attention_bias": family.attention_bias,
        "qk_norm": family.qk_norm,
        "tie_embeddings": bool(hf_config.get("tie_word_embeddings", False)),
        "router_renormalize": _renormalizes(hf_config, family),
        "balancing": "aux_loss",
        **_rope_from_hf(hf_config, family.rope_theta),
    }
    return apply_overrides(ModelConfig(**fields).without_techniques(), "model", overrides)


def _check_supported(hf_config: dict, family: Family) -> None:
    """Fail on the switches of config.json that give a model zen-coder's cannot compute."""
    biases = {"attention_bias": "q, k, v and o", "mlp_bias": "the MLP"}
    for name, where in biases.items():
        if hf_config.get(name) and not (name == "attention_bias" and family.attention_bias):
            raise ZenCoderError(
                f"config.json: {name}=true (biases on {where}) is not supported; zen-coder's "
                "model has biases on q, k and v only, as Qwen2"
            )
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ZenCoderError(
            f"config.json: hidden_act {hf_config['hidden_act']!r} is not supported; zen-coder's "
            "experts are SwiGLU (silu)"
        )
    # Qwen3-MoE's dense layers among the sparse ones: every zen-coder block is a mixture.
    if hf_config.get("decoder_sparse_step", 1) != 1:
        raise ZenCoderError(
            f"config.json: decoder_sparse_step {hf_config['decoder_sparse_step']} is not "
            "supported; zen-coder's blocks are all mixtures of experts (decoder_sparse_step 1)"
        )
    if hf_config.get("mlp_only_layers"):
        raise ZenCoderError(
            f"config.json: mlp_only_layers {hf_config['mlp_only_layers']} is not supported; "
            "zen-coder's blocks are all mixtures of experts (mlp_only_layers [])"
        )


def _experts(hf_config: dict) -> int:
    """The number of experts: Mixtral's `num_local_experts`, or Qwen3-MoE's `num_experts`
    (transformers 5 writes Qwen3-MoE's as `num_local_experts` too)."""
    return hf_config.get("num_experts") or _field(hf_config, "num_local_experts")


def _renormalizes(hf_config: dict, family: Family) -> bool:
    """Whether the top-k routing weights are renormalized to sum to 1 (Mixtral always does)."""
    if family.renormalize is None:
        return True
    name, default = family.renormalize
    return bool(hf_config.get(name, default))


def _architecture(hf_config: dict) -> str:
    names = hf_config.get("architectures") or [
        name
        for name, family in FAMILIES.items()
        if family.model_type == hf_config.get("model_type")
    ]
    name = names[0] if names else hf_config.get("model_type")
    if name not in FAMILIES:
        raise ZenCoderError(
            f"config.json: architecture {name!r} is not supported; supported: {', '.join(FAMILIES)}"
        )
    return name


def _field(table: dict, name: str, where: str = "config.json") -> Any:
    if table.get(name) is None:
        raise ZenCoderError(f"{where} lacks {name!r}; pass the config.json saved with the model")
    return table[name]


def _context_length(hf_config: dict) -> int:
    """max_position_embeddings, capped at the sliding window where the checkpoint uses one:
    zen-coder attends to the whole context, which matches sliding-window attention only for
    sequences that fit in the window."""
    length = _field(hf_config, "max_position_embeddings")
    window = hf_config.get("sliding_window") if hf_config.get("use_sliding_window", True) else None
    return min(length, window) if window else length


def _rope_from_hf(hf_config: dict, default_theta: float) -> dict[str, Any]:
    """The rotary fields, from transformers 5's `rope_parameters` or 4.x's `rope_scaling` and
    `rope_theta` (4.x's `rope_scaling` wins, as in transformers)."""
    parameters = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    if any(isinstance(value, dict) for value in parameters.values()):
        raise ZenCoderError("config.json: per-layer-type rope parameters are not supported")
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    where = f"config.json {kind} rope parameters"
    theta = float(parameters.get("rope_theta", hf_config.get("rope_theta", default_theta)))
    if kind == "default":
        return {"rope_theta": theta, "rope_scaling": "none"}
    if kind == "linear":
        return {
            "rope_theta": theta,
            "rope_scaling": "linear",
            "rope_factor": float(_field(parameters, "factor", where)),
        }
    if kind == "llama3":
        return {
            "rope_theta": theta,
            "rope_scaling": "llama3",
            "rope_factor": float(_field(parameters, "factor", where)),
            "rope_low_freq_factor": float(_field(parameters, "low_freq_factor", where)),
            "rope_high_freq_factor": float(_field(parameters, "high_freq_factor", where)),
            "rope_original_context": int(
                parameters.get("original_max_position_embeddings")
                or hf_config["max_position_embeddings"]
            ),
        }
    raise ZenCoderError(
        f"config.json: rope scaling {kind!r} is not supported; supported: default, linear, llama3"
    )


def _export_architecture(config: ModelConfig) -> str:
    """The family a model exports as: with q/k norms Qwen3, or Qwen3-MoE when it has experts;
    without, Mixtral when it has experts, else Qwen2 with q/k/v biases, else Llama."""
    if config.qk_norm:
        return "Qwen3MoeForCausalLM" if config.n_experts > 1 else "Qwen3ForCausalLM"
    if config.n_experts > 1:
        return "MixtralForCausalLM"
    return "Qwen2ForCausalLM" if config.attention_bias else "LlamaForCausalLM"


def _config_to_hf(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """config.json for `config`, in the family `_export_architecture` chooses."""
    architecture = _export_architecture(config)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling == "linear":
        rope |= {"rope_type": "linear", "factor": config.rope_factor}
    elif config.rope_scaling == "llama3":
        rope |= {
            "rope_type": "llama3",
            "factor": config.rope_factor,
            "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_context,
        }
    hf_config = {
        "architectures": [architecture],
        "model_type": FAMILIES[architecture].model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.expert_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dimension,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_parameters": rope,
        # transformers 4.x reads these two instead of rope_parameters.
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling == "none" else rope,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return hf_config | _family_fields(config, architecture)


def _family_fields(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """The fields of config.json only `architecture` has. zen-coder attends to the whole
    context, so every sliding window is off."""
    no_window = {"use_sliding_window": False, "sliding_window": None}
    if architecture == "MixtralForCausalLM":
        return {
            "num_local_experts": config.n_experts,
            "num_experts_per_tok": config.experts_per_token,
            "router_aux_loss_coef": config.balance_loss_weight,
            "sliding_window": None,
        }
    if architecture == "Qwen3MoeForCausalLM":
        return no_window | {
            "attention_bias": False,
            "num_experts": config.n_experts,
            "num_experts_per_tok": config.experts_per_token,
            "moe_intermediate_size": config.expert_dim,
            "norm_topk_prob": config.router_renormalize,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "router_aux_loss_coef": config.balance_loss_weight,
        }
    if architecture == "Qwen3ForCausalLM":
        return no_window | {"attention_bias": False}
    if architecture == "Qwen2ForCausalLM":
        return no_window
    return {}


# -- the weight map -----------------------------------------------------------------------------


def _checkpoint_tensors(config: ModelConfig, layout: str) -> dict[str, Target]:
    """Every tensor a checkpoint of `layout` holds for `config`, layer by layer, with the native
    parameters each one fills."""
    weights = SHARED_WEIGHTS | FEED_FORWARD_WEIGHTS[layout]
    tensors = {}
    for layer in [None, *range(config.n_layers)]:
        for hf_name, native in weights.items():
            if ("{i}" in hf_name) != (layer is not None):
                continue
            if hf_name.endswith(".bias") and not config.attention_bias:
                continue
            if hf_name.endswith(("q_norm.weight", "k_norm.weight")) and not config.qk_norm:
                continue
            if hf_name == "lm_head.weight" and config.tie_embeddings:
                continue
            names = (native,) if isinstance(native, str) else native
            spread = layout == "dense" and ".moe.experts.w" in names[0]
            experts = range(config.n_experts) if "{j}" in hf_name else [None]
            for expert in experts:
                tensors[hf_name.format(i=layer, j=expert)] = Target(
                    tuple(name.format(i=layer) for name in names), expert, spread
                )
    return tensors


def _parts(model: ZenCoder, target: Target) -> list[Tensor]:
    parameters = [model.get_parameter(name) for name in target.native]
    if target.expert is not None:
        return [parameter[target.expert] for parameter in parameters]
    return parameters


def _checkpoint_shape(parts: list[Tensor], target: Target, upcycle: str) -> tuple[int, ...]:
    """The shape the checkpoint's tensor must have to fill `parts`."""
    if target.spread:
        experts, *shape = parts[0].shape  # [E, F, D] (gate, up) or [E, D, F] (down)
        if upcycle == "slice":
            shape[_width_dim(target)] *= experts
        return tuple(shape)
    if len(parts) == 2:
        first, second = parts
        return (first.shape[0], first.shape[1] + second.shape[1], *first.shape[2:])
    return tuple(parts[0].shape)


def _width_dim(target: Target) -> int:
    """The FFN-width dimension of a dense MLP matrix: rows of gate and up, columns of down."""
    return 1 if target.native[0].endswith(".w2") else 0


# -- loading ------------------------------------------------------------------------------------


def load_pretrained(
    path: Path,
    *,
    experts: int | None = None,
    experts_per_token: int | None = None,
    upcycle: str = "copy",
    **overrides: Any,
) -> ZenCoder:
    """The native model of a Hugging Face folder, in eval mode, parameters in float32.

    A dense checkpoint loads as one expert, or with `experts=N` as N experts (sparse
    upcycling): `upcycle="copy"` puts the whole MLP in each, so the output is the dense model's
    for any `experts_per_token`; "slice" cuts the MLP width into N slices (experts are cheaper
    and differ from the start), exactly dense when `experts_per_token == N`. `overrides` are
    ModelConfig fields, e.g. `temporal_attention=True` to fine-tune with a technique; its
    tensors start at zero, where they change nothing. The random parts (the routers of an
    upcycled checkpoint) are drawn with a seed from torch's global generator.
    """
    seed = int(torch.randint(2**62, ()))
    config, sources = pretrained_sources(
        path,
        experts=experts,
        experts_per_token=experts_per_token,
        upcycle=upcycle,
        seed=seed,
        **overrides,
    )
    return build(config, sources, seed=seed).eval()


def pretrained_sources(
    path: Path,
    *,
    experts: int | None = None,
    experts_per_token: int | None = None,
    upcycle: str = "copy",
    vocab_size: int | None = None,
    seed: int = 0,
    **overrides: Any,
) -> tuple[ModelConfig, dict[str, Source]]:
    """The model a Hugging Face folder becomes (see `load_pretrained`) and where each of its
    weights comes from, for `weights.build` to read tensor by tensor, whole or as each rank's
    shards. With `vocab_size` (the data's tokenizer) the token rows grow to at least that many
    (`weights.grow_vocabulary`). `seed` draws the routers of a dense checkpoint; the tensors the
    checkpoint lacks (switched-on techniques) start as a new model's do."""
    path = Path(path)
    hf_config = _read_config(path)
    files = _tensor_files(path)
    base = config_from_hf(hf_config)
    moe = FAMILIES[_architecture(hf_config)].moe
    upcycling = _upcycling(base, moe, experts, experts_per_token, upcycle)
    config = apply_overrides(base, "model", upcycling | overrides)
    layout = _layout(moe, files)
    tensors = _checkpoint_tensors(config, layout)
    _check_names(tensors, files, path, tied=config.tie_embeddings)
    checkpoint = Checkpoint(files)
    with torch.device("meta"):
        model = ZenCoder(config)
    _check_shapes(model, tensors, checkpoint, upcycle)
    sources = _checkpoint_sources(model, tensors, checkpoint, upcycle)
    if layout == "dense":
        sources |= _router_sources(model, seed)
    return grow_vocabulary(config, sources, vocab_size)


def _read_config(path: Path) -> dict:
    file = path / CONFIG
    if not file.is_file():
        raise ZenCoderError(f"{file} not found; pass a Hugging Face model folder")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ZenCoderError(f"{file} is not valid JSON: {error}") from None


def _tensor_files(path: Path) -> dict[str, Path]:
    """Which file holds each tensor: the single weights file, or the shards the index lists."""
    if (path / WEIGHTS).is_file():
        with safe_open(path / WEIGHTS, framework="pt") as tensor_file:
            return dict.fromkeys(tensor_file.keys(), path / WEIGHTS)
    if not (path / INDEX).is_file():
        raise ZenCoderError(
            f"{path} has no {WEIGHTS} or {INDEX}; zen-coder loads safetensors weights only "
            "(re-save .bin checkpoints with transformers' save_pretrained)"
        )
    files = {name: path / shard for name, shard in _read_index(path)["weight_map"].items()}
    for shard in set(files.values()):
        if not shard.is_file():
            raise ZenCoderError(
                f"{path / INDEX} lists {shard.name}, which is missing; re-download it"
            )
    return files


def _read_index(path: Path) -> dict:
    try:
        return json.loads((path / INDEX).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ZenCoderError(f"{path / INDEX} is not valid JSON: {error}") from None


def _upcycling(
    base: ModelConfig,
    moe: bool,
    experts: int | None,
    experts_per_token: int | None,
    upcycle: str,
) -> dict[str, int]:
    """The expert fields of `base` that `experts`, `experts_per_token` and `upcycle` change."""
    if upcycle not in UPCYCLE:
        raise ZenCoderError(f"upcycle={upcycle!r} is not supported; choose one of {UPCYCLE}")
    if moe:
        if experts is not None:
            raise ZenCoderError(
                "experts= upcycles dense checkpoints; this one is already a mixture of experts"
            )
        return {} if experts_per_token is None else {"experts_per_token": experts_per_token}
    if experts is None:
        if experts_per_token not in (None, 1):
            raise ZenCoderError(
                "experts_per_token needs experts=N; without it a dense checkpoint is one expert"
            )
        return {}
    if experts < 1:
        raise ZenCoderError(f"experts={experts}; upcycling needs at least one expert")
    width = base.expert_dim
    if upcycle == "slice" and width % experts:
        raise ZenCoderError(
            f"config.json: intermediate_size {width} does not divide into {experts} slices; "
            "choose experts that divide it, or upcycle='copy'"
        )
    return {
        "n_experts": experts,
        "experts_per_token": experts_per_token or min(UPCYCLED_EXPERTS_PER_TOKEN, experts),
        "expert_dim": width // experts if upcycle == "slice" else width,
    }


def _layout(moe: bool, files: dict[str, Path]) -> str:
    """Which FEED_FORWARD_WEIGHTS names the checkpoint uses: the names tell, whichever family
    the checkpoint is (transformers 5 holds Mixtral in memory under Qwen3-MoE's fused names)."""
    if not moe:
        return "dense"
    if any(name.endswith(".mlp.experts.gate_up_proj") for name in files):
        return "fused"
    return "qwen3_moe" if any(".mlp.experts." in name for name in files) else "mixtral"


def _check_names(
    tensors: dict[str, Target], files: dict[str, Path], path: Path, tied: bool
) -> None:
    """Fail before reading any weights when the checkpoint lacks a tensor or holds a foreign one."""
    for name in tensors:
        if name not in files:
            raise ZenCoderError(
                f"{path}: the checkpoint lacks tensor {name}; its weights are incomplete or do "
                "not match config.json"
            )
    for name, file in files.items():
        ignored = name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight")
        if name not in tensors and not ignored:
            raise ZenCoderError(
                f"{file}: tensor {name} has no place in zen-coder's model; only the standard "
                f"{', '.join(FAMILIES)} layouts load"
            )


def _check_shapes(
    model: ZenCoder, tensors: dict[str, Target], checkpoint: Checkpoint, upcycle: str
) -> None:
    """Fail before reading any weights when a tensor's shape does not fit config.json."""
    for name, target in tensors.items():
        expected = _checkpoint_shape(_parts(model, target), target, upcycle)
        shape = checkpoint.shapes[name]
        if shape != expected:
            raise ZenCoderError(
                f"{checkpoint.files[name]}: tensor {name} has shape {list(shape)}, "
                f"expected {list(expected)} from config.json; the weights do not match the config"
            )


def _checkpoint_sources(
    model: ZenCoder, tensors: dict[str, Target], checkpoint: Checkpoint, upcycle: str
) -> dict[str, Source]:
    """Where each native weight the checkpoint holds comes from: the weight map read backwards."""
    sources: dict[str, Source] = {}
    experts: dict[str, dict[int, Source]] = {}
    for name, target in tensors.items():
        parts = _parts(model, target)
        pieces: list[Source] = [Stored(checkpoint, name)]
        if len(parts) == 2:  # concatenated along dimension 1
            pieces = [Shifted(pieces[0], 1, 0), Shifted(pieces[0], 1, parts[0].shape[1])]
        for native, part, piece in zip(target.native, parts, pieces, strict=True):
            if target.spread:
                width_dim = _width_dim(target)
                piece = Upcycled(
                    piece,
                    experts=part.shape[0],
                    width=part.shape[1 + width_dim],
                    width_dim=width_dim,
                    sliced=upcycle == "slice",
                )
            if target.expert is None:
                sources[native] = piece
            else:
                experts.setdefault(native, {})[target.expert] = piece
    for native, stacked in experts.items():
        sources[native] = Stacked(tuple(stacked[index] for index in range(len(stacked))))
    return sources


def _router_sources(model: ZenCoder, seed: int) -> dict[str, Source]:
    """Routers of a dense checkpoint: small random weights when only some experts are active,
    so tokens spread over the experts (a zero router would send every token to the same k:
    ties go to the lowest index, and the others would never train). Copies stay exact whatever
    the router (identical experts, weights summing to 1); slices with every expert active need
    the uniform weights of a zero router."""
    config = model.config
    std = 1e-3 if config.experts_per_token < config.n_experts else 0.0
    sources: dict[str, Source] = {}
    for index, block in enumerate(model.blocks):
        name = f"blocks.{index}.moe.router.weight"
        sources[name] = Initial(tuple(block.moe.router.weight.shape), 0.0, std, seed, name)
    return sources


# -- saving -------------------------------------------------------------------------------------


def save_pretrained(
    model: ZenCoder,
    path: Path,
    *,
    token_ids: Mapping[str, int | None] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Write `model` as a folder `transformers.AutoModelForCausalLM.from_pretrained` loads, in
    the family `_export_architecture` chooses (Llama, Qwen2, Qwen3, Mixtral or Qwen3-MoE).

    `token_ids` (`bos_token_id`, `eos_token_id`, `pad_token_id`: the tokenizer's) go into
    config.json, where transformers' generation reads when to stop and what to pad with.

    Each file is written under a temporary name and renamed, so a reader never sees a
    half-written file; weight files of an earlier save that this one does not replace are then
    removed, and config.json comes last. The card's techniques have no place in these formats:
    config.json (`EXPORT_FIELD`) and the model card (README.md) say which techniques the
    native model used and which of them the export drops, and the export warns when it drops
    any (`dropped_parts`).
    """
    config = model.config
    path = Path(path)
    architecture = _export_architecture(config)
    _check_exportable(config, architecture)
    dropped = dropped_parts(model)
    if dropped:
        warnings.warn(f"exporting {path}: {_dropped_sentence(dropped)}", stacklevel=2)
    layout = FAMILIES[architecture].layout
    tensors = {
        name: _export_tensor(model, target)
        for name, target in _checkpoint_tensors(config, layout).items()
    }
    path.mkdir(parents=True, exist_ok=True)
    shards = _plan_shards(tensors, max_shard_bytes)
    written = []
    for index, names in enumerate(shards, start=1):
        file = (
            WEIGHTS if len(shards) == 1 else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        )
        shard = {name: tensors[name].detach().to("cpu", copy=True).contiguous() for name in names}
        write_atomic(path / file, lambda temporary, shard=shard: _save_shard(shard, temporary))
        written.append(file)
    if len(shards) > 1:
        index_json = {
            "metadata": {"total_size": sum(tensor.nbytes for tensor in tensors.values())},
            "weight_map": {name: written[i] for i, names in enumerate(shards) for name in names},
        }
        write_json_atomic(path / INDEX, index_json, indent=2, sort_keys=False)
        written.append(INDEX)
    for stale in path.iterdir():
        if stale.name not in written and (
            stale.name in (WEIGHTS, INDEX) or SHARD.fullmatch(stale.name)
        ):
            stale.unlink()
    dtype = next(model.parameters()).dtype
    hf_config = _config_to_hf(config, dtype) | {
        name: value for name, value in (token_ids or {}).items() if value is not None
    }
    statement = export_statement(config, dropped)
    write_atomic(path / MODEL_CARD, lambda temporary: temporary.write_text(_model_card(statement)))
    write_json_atomic(
        path / CONFIG, hf_config | {EXPORT_FIELD: statement}, indent=2, sort_keys=False
    )


def _check_exportable(config: ModelConfig, architecture: str) -> None:
    """Fail where the chosen family cannot compute what `config` does."""
    name, family = architecture.removesuffix("ForCausalLM"), FAMILIES[architecture]
    if config.attention_bias and not family.attention_bias:
        raise ZenCoderError(
            f"{name} has no biases on q, k and v alone (only Qwen2, dense and without q/k "
            "norms, has); export a model with attention_bias off"
        )
    if family.moe and family.renormalize is None and not config.router_renormalize:
        raise ZenCoderError(
            f"{name} always renormalizes its top-k weights; export a model with "
            "router_renormalize on"
        )


def dropped_parts(model: ZenCoder) -> dict[str, str]:
    """The parts of `model` (`PARTS` names) an export drops and their tensors: those whose
    tensors are not all zero, so that leaving them out changes what the model computes (a
    technique switched on but never trained, its tensors still zero, loses nothing)."""
    dropped: dict[str, str] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        pattern = re.sub(r"^blocks\.\d+\.", "blocks.{i}.", name)
        if pattern in NATIVE_ONLY and tensor.count_nonzero():
            dropped[NATIVE_ONLY[pattern]] = pattern.replace("{i}", "*")
    return dict(sorted(dropped.items()))


def export_statement(config: ModelConfig, dropped: Mapping[str, str]) -> dict[str, Any]:
    """What config.json says of the card's techniques: the native model's four switches, which
    parts the export drops, and what the exported model computes therefore."""
    return {
        "techniques": config.techniques,
        "dropped": list(dropped),
        "note": _dropped_sentence(dropped)
        if dropped
        else "this export computes what the native model computes: it drops nothing",
    }


def _dropped_sentence(dropped: Mapping[str, str]) -> str:
    parts = ", ".join(f"{PARTS[part]} ({tensors})" for part, tensors in dropped.items())
    return (
        f"the Hugging Face format cannot hold {parts}; the export drops them and computes what "
        "the native model computes with no repository, language or time input. The native "
        "model folder keeps them"
    )


def _model_card(statement: Mapping[str, Any]) -> str:
    """README.md of an export: the model's history techniques and what the export lost."""
    used = [PARTS[name] for name, on in statement["techniques"].items() if on]
    dropped = [PARTS[name] for name in statement["dropped"]]
    lines = [
        "# zen-coder model, exported to the Hugging Face format",
        f"History techniques of the native model: {', '.join(used) or 'none'}.",
        f"Dropped by this export: {', '.join(dropped) or 'none'} ({statement['note']}).",
    ]
    if statement["techniques"]["contrastive_loss"]:
        lines.append("The contrastive loss only shaped training: what it taught is in the weights.")
    lines.append(f"The same statement is `{EXPORT_FIELD}` in config.json.")
    return "\n\n".join(lines) + "\n"


def _export_tensor(model: ZenCoder, target: Target) -> Tensor:
    parts = _parts(model, target)
    if target.spread:
        parts = [part[0] for part in parts]  # a dense model's one expert
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _plan_shards(tensors: dict[str, Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names grouped in order into shards of at most `max_bytes` (a larger tensor gets a
    shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += tensor.nbytes
    return shards


def _save_shard(tensors: dict[str, Tensor], file: Path) -> None:
    save_file(tensors, file, metadata={"format": "pt"})  # transformers expects the format tag
