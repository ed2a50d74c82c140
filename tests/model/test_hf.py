"""Hugging Face interop: every family's logits survive the trip both ways, upcycling keeps the
dense model's output, shards load, and bad checkpoints fail with one line naming the problem."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zen_coder.errors import ZenCoderError
from zen_coder.model.config import ModelConfig
from zen_coder.model.hf import load_pretrained, save_pretrained
from zen_coder.model.model import ZenCoder

transformers = pytest.importorskip("transformers")

SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # shorter than the test sequences: scaling matters
}
FAMILIES = {
    "llama": ("Llama", {}),
    "llama-llama3-rope-tied": (
        "Llama",
        {"rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": True},
    ),
    "mistral-linear-rope": (
        "Mistral",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10_000.0, "factor": 2.0}},
    ),
    "qwen2": ("Qwen2", {}),
    "mixtral": ("Mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}
NATIVE = ModelConfig(
    vocab_size=256,
    context_length=128,
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    n_experts=4,
    experts_per_token=2,
    expert_dim=32,
    rope_theta=10_000.0,
).without_techniques()
TOLERANCE = 1e-4


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, norms and biases included, so a swapped or dropped tensor
    shows in the logits (initializers leave norms at one and biases at zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0, 0.1)
            else:
                parameter.normal_(0.0, 0.05)
    return model.eval()


def hf_model(family: str, **changes) -> torch.nn.Module:
    prefix, extra = FAMILIES[family]
    config = getattr(transformers, f"{prefix}Config")(**SHAPE | extra | changes)
    return randomize(getattr(transformers, f"{prefix}ForCausalLM")(config).float())


def hf_checkpoint(folder: Path, family: str = "llama", **save) -> torch.nn.Module:
    model = hf_model(family)
    model.save_pretrained(folder, **save)
    return model


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def difference(first: torch.nn.Module, second: torch.nn.Module) -> float:
    ids = tokens()
    return (first(ids).logits - second(ids).logits).abs().max().item()


def one_line_error(function, *args, **kwargs) -> str:
    with pytest.raises(ZenCoderError) as error:
        function(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


# -- Hugging Face -> zen-coder ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_the_same_logits(tmp_path, family):
    reference = hf_checkpoint(tmp_path, family)
    model = load_pretrained(tmp_path)
    assert not any(model.config.techniques.values())
    assert model.config.balancing == "aux_loss"
    assert difference(reference, model) < TOLERANCE


def test_mixtral_in_the_fused_in_memory_layout_loads(tmp_path):
    reference = hf_checkpoint(tmp_path, "mixtral")
    assert any(
        "block_sparse_moe.experts.0.w1" in name
        for name in load_file(tmp_path / "model.safetensors")
    )
    (tmp_path / "model.safetensors").unlink()
    save_file(reference.state_dict(), tmp_path / "model.safetensors")  # gate_up_proj, down_proj
    assert difference(reference, load_pretrained(tmp_path)) < TOLERANCE


def test_sharded_checkpoints_load(tmp_path):
    reference = hf_checkpoint(tmp_path, "mixtral", max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert difference(reference, load_pretrained(tmp_path)) < TOLERANCE


def test_switched_on_techniques_start_as_no_ops(tmp_path):
    reference = hf_checkpoint(tmp_path)
    model = load_pretrained(tmp_path, temporal_attention=True, language_routing=True)
    assert model.config.temporal_attention and model.config.language_routing
    ids = tokens()
    side = {"time": torch.arange(48).expand(2, 48), "language": torch.ones_like(ids)}
    with torch.no_grad():
        assert (reference(ids).logits - model(ids, **side).logits).abs().max() < TOLERANCE


# -- upcycling ------------------------------------------------------------------------------


@pytest.mark.parametrize("experts_per_token", [1, 2, 4])
def test_copy_upcycling_keeps_the_dense_output(tmp_path, experts_per_token):
    reference = hf_checkpoint(tmp_path)
    model = load_pretrained(tmp_path, experts=4, experts_per_token=experts_per_token)
    assert (model.config.n_experts, model.config.expert_dim) == (4, 128)
    assert difference(reference, model) < TOLERANCE


def test_slice_upcycling_with_every_expert_active_is_exact(tmp_path):
    reference = hf_checkpoint(tmp_path)
    model = load_pretrained(tmp_path, experts=4, experts_per_token=4, upcycle="slice")
    assert (model.config.n_experts, model.config.expert_dim) == (4, 32)
    assert difference(reference, model) < TOLERANCE


def test_slice_upcycling_with_fewer_experts_active_differs(tmp_path):
    reference = hf_checkpoint(tmp_path)
    model = load_pretrained(tmp_path, experts=4, experts_per_token=2, upcycle="slice")
    router = model.blocks[0].moe.router.weight
    assert 0 < router.std() < 1e-2  # small and random, so tokens spread over the experts
    assert difference(reference, model) > 1e-3


def test_slices_must_divide_the_width(tmp_path):
    hf_checkpoint(tmp_path)
    message = one_line_error(load_pretrained, tmp_path, experts=3, upcycle="slice")
    assert "intermediate_size 128" in message


# -- zen-coder -> Hugging Face ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "architecture"),
    [
        ({}, "MixtralForCausalLM"),
        (
            {"rope_scaling": "llama3", "rope_factor": 4.0, "rope_original_context": 16},
            "MixtralForCausalLM",
        ),
        ({"n_experts": 1, "experts_per_token": 1, "tie_embeddings": True}, "LlamaForCausalLM"),
        ({"n_experts": 1, "experts_per_token": 1, "attention_bias": True}, "Qwen2ForCausalLM"),
    ],
)
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, changes, architecture):
    config = ModelConfig(**NATIVE.to_dict() | changes)
    model = randomize(ZenCoder(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # techniques off: nothing is lost, nothing to warn about
        save_pretrained(model, tmp_path)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(exported).__name__ == architecture
    assert difference(model, exported) < TOLERANCE
    assert difference(model, load_pretrained(tmp_path)) < TOLERANCE


def test_export_shards_with_an_index_and_replaces_earlier_files(tmp_path):
    model = randomize(ZenCoder(NATIVE))
    save_pretrained(model, tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / shard).is_file() for shard in shards)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert difference(model, exported) < TOLERANCE
    save_pretrained(model, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert difference(model, load_pretrained(tmp_path)) < TOLERANCE


def test_export_warns_about_non_zero_technique_tensors(tmp_path):
    config = ModelConfig(
        **NATIVE.to_dict() | {"temporal_attention": True, "language_routing": True}
    )
    model = randomize(ZenCoder(config))
    with torch.no_grad():
        for block in model.blocks:
            block.moe.language.zero_()
    with pytest.warns(
        UserWarning, match=r"temporal attention \(blocks\.\*\.attention\.temporal\.weight\)"
    ) as record:
        save_pretrained(model, tmp_path)
    assert "language routing" not in str(record[0].message)


# -- errors -------------------------------------------------------------------------------------


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def edit_weights(folder: Path, name: str, replacement: torch.Tensor | None) -> None:
    tensors = load_file(folder / "model.safetensors")
    if replacement is None:
        del tensors[name]
    else:
        tensors[name] = replacement
    save_file(tensors, folder / "model.safetensors")


def test_a_missing_tensor_is_named(tmp_path):
    hf_checkpoint(tmp_path)
    edit_weights(tmp_path, "model.layers.1.self_attn.k_proj.weight", None)
    assert "model.layers.1.self_attn.k_proj.weight" in one_line_error(load_pretrained, tmp_path)


def test_a_wrong_shape_is_named_with_both_shapes(tmp_path):
    hf_checkpoint(tmp_path)
    edit_weights(tmp_path, "model.layers.0.mlp.up_proj.weight", torch.zeros(96, 64))
    message = one_line_error(load_pretrained, tmp_path)
    assert "model.layers.0.mlp.up_proj.weight" in message
    assert "[96, 64]" in message and "[128, 64]" in message


def test_an_unknown_architecture_is_named_with_the_supported_ones(tmp_path):
    hf_checkpoint(tmp_path)
    edit_config(tmp_path, architectures=["GPT2LMHeadModel"])
    message = one_line_error(load_pretrained, tmp_path)
    assert "GPT2LMHeadModel" in message and "MixtralForCausalLM" in message


def test_unsupported_rope_scaling_is_named(tmp_path):
    hf_checkpoint(tmp_path)
    edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0})
    assert "'yarn'" in one_line_error(load_pretrained, tmp_path)


def test_missing_files_are_named(tmp_path):
    assert "config.json" in one_line_error(load_pretrained, tmp_path)
    hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "model.safetensors" in one_line_error(load_pretrained, tmp_path)
