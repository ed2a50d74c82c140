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
from zen_coder.model.hf import EXPORT_FIELD, config_from_hf, load_pretrained, save_pretrained
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
QWEN3_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
# Each test family: the transformers class prefix, its config changes, and the family
# zen-coder exports the loaded model as (Mistral without a sliding window is Llama).
FAMILIES = {
    "llama": ("Llama", {}, "Llama"),
    "llama-llama3-rope-tied": (
        "Llama",
        {"rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": True},
        "Llama",
    ),
    "mistral-linear-rope": (
        "Mistral",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10_000.0, "factor": 2.0}},
        "Llama",
    ),
    "qwen2": ("Qwen2", {}, "Qwen2"),
    "qwen3": ("Qwen3", {}, "Qwen3"),  # Qwen3's head_dim 128, not hidden_size / heads
    "mixtral": ("Mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, "Mixtral"),
    "qwen3-moe": ("Qwen3Moe", QWEN3_MOE | {"norm_topk_prob": True, "head_dim": 32}, "Qwen3Moe"),
    "qwen3-moe-unnormalized": ("Qwen3Moe", QWEN3_MOE, "Qwen3Moe"),  # norm_topk_prob false
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
    prefix, extra, _ = FAMILIES[family]
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


def greedy(model: torch.nn.Module, new_tokens: int = 8) -> list[list[int]]:
    """`new_tokens` greedy tokens after a prompt, by zen-coder's generate or transformers'."""
    prompt = tokens()[:, :16]
    if isinstance(model, ZenCoder):
        generated = model.generate(prompt, new_tokens)
    else:
        generated = model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
    return generated[:, prompt.shape[1] :].tolist()


def one_line_error(function, *args, **kwargs) -> str:
    with pytest.raises(ZenCoderError) as error:
        function(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


# -- Hugging Face -> zen-coder ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_and_exports_with_the_same_logits_and_tokens(tmp_path, family):
    """transformers -> zen-coder -> transformers. Broken by hand once each, the comparisons
    fail: with q_norm and k_norm swapped in the name map, the loaded Qwen3's logits are off by
    0.12 and Qwen3-MoE's by 0.25; with norm_topk_prob ignored on load, Qwen3-MoE's are off by
    0.15."""
    reference = hf_checkpoint(tmp_path / "base", family)
    model = load_pretrained(tmp_path / "base")
    assert not any(model.config.techniques.values())
    assert model.config.balancing == "aux_loss"
    assert difference(reference, model) < TOLERANCE
    save_pretrained(model, tmp_path / "export")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(exported).__name__ == f"{FAMILIES[family][2]}ForCausalLM"
    assert difference(reference, exported) < TOLERANCE
    assert greedy(model) == greedy(reference) == greedy(exported)


@pytest.mark.parametrize(
    ("family", "per_expert"),
    [("mixtral", "block_sparse_moe.experts.0.w1"), ("qwen3-moe", "mlp.experts.0.gate_proj")],
)
def test_the_fused_in_memory_expert_layout_loads(tmp_path, family, per_expert):
    reference = hf_checkpoint(tmp_path, family)
    assert any(per_expert in name for name in load_file(tmp_path / "model.safetensors"))
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


@pytest.mark.parametrize(
    ("family", "experts_per_token"), [("llama", 1), ("llama", 2), ("llama", 4), ("qwen3", 2)]
)
def test_copy_upcycling_keeps_the_dense_output(tmp_path, family, experts_per_token):
    reference = hf_checkpoint(tmp_path, family)
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
        ({"n_experts": 1, "experts_per_token": 1, "qk_norm": True}, "Qwen3ForCausalLM"),
        ({"qk_norm": True, "head_dim": 32}, "Qwen3MoeForCausalLM"),
        ({"qk_norm": True, "router_renormalize": False}, "Qwen3MoeForCausalLM"),
    ],
)
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, changes, architecture):
    """Broken by hand once, norm_topk_prob left out of the exported config.json: transformers'
    Qwen3-MoE (which then keeps its top-k weights as they are) is off by 0.14."""
    config = ModelConfig(**NATIVE.to_dict() | changes)
    model = randomize(ZenCoder(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # techniques off: nothing is lost, nothing to warn about
        save_pretrained(model, tmp_path)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(exported).__name__ == architecture
    assert difference(model, exported) < TOLERANCE
    assert greedy(model) == greedy(exported)
    assert difference(model, load_pretrained(tmp_path)) < TOLERANCE


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"router_renormalize": False}, "Mixtral always renormalizes"),
        ({"attention_bias": True}, "Mixtral has no biases on q, k and v alone"),
        ({"attention_bias": True, "qk_norm": True}, "Qwen3Moe has no biases on q, k and v"),
        (
            {"attention_bias": True, "qk_norm": True, "n_experts": 1, "experts_per_token": 1},
            "Qwen3 has no biases on q, k and v",
        ),
    ],
)
def test_a_model_no_family_holds_is_not_exported(tmp_path, changes, message):
    model = ZenCoder(ModelConfig(**NATIVE.to_dict() | changes))
    assert message in one_line_error(save_pretrained, model, tmp_path)
    assert not tmp_path.joinpath("config.json").exists()


def test_export_shards_with_an_index_and_replaces_earlier_files(tmp_path):
    model = randomize(ZenCoder(NATIVE))
    save_pretrained(model, tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / shard).is_file() for shard in shards)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert difference(model, exported) < TOLERANCE
    save_pretrained(model, tmp_path)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
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
    statement = json.loads((tmp_path / "config.json").read_text())[EXPORT_FIELD]
    assert statement["dropped"] == ["temporal_attention"]  # the zero table loses nothing


def test_an_export_states_which_techniques_the_model_used_and_it_drops(tmp_path):
    """config.json and README.md say, lasting in the folder, which of the four techniques the
    native model used and which the export drops; the warning names them too; and the exported
    model computes what the statement says: the native model without its channels, not with
    them. (Broken by hand once, the statement's dropped list from the warning's old text: the
    list comparison failed.)"""
    four_on = dict.fromkeys(NATIVE.techniques, True)
    model = randomize(ZenCoder(ModelConfig(**NATIVE.to_dict() | four_on | {"n_repos": 3})))
    with pytest.warns(UserWarning) as record:
        save_pretrained(model, tmp_path)
    (warning,) = [str(w.message) for w in record if "Hugging Face format" in str(w.message)]
    for part in ("repository embeddings", "temporal attention", "language routing"):
        assert part in warning
    statement = json.loads((tmp_path / "config.json").read_text())[EXPORT_FIELD]
    assert statement["techniques"] == four_on
    assert statement["dropped"] == ["language_routing", "repo_embeddings", "temporal_attention"]
    card = (tmp_path / "README.md").read_text()
    assert (
        "History techniques of the native model: repository embeddings, temporal attention, "
        "language routing, contrastive loss." in card
    )
    assert (
        "Dropped by this export: language routing, repository embeddings, temporal attention"
        in card
    )
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = tokens()
    channels = {"repo": torch.ones_like(ids), "language": torch.ones_like(ids), "time": ids}
    with torch.no_grad():
        assert (exported(ids).logits - model(ids).logits).abs().max() < TOLERANCE
        assert (exported(ids).logits - model(ids, **channels).logits).abs().max() > 1e-2


def test_an_export_of_a_model_without_techniques_states_it_drops_nothing(tmp_path):
    save_pretrained(randomize(ZenCoder(NATIVE)), tmp_path)
    statement = json.loads((tmp_path / "config.json").read_text())[EXPORT_FIELD]
    assert statement["techniques"] == dict.fromkeys(NATIVE.techniques, False)
    assert statement["dropped"] == []
    card = (tmp_path / "README.md").read_text()
    assert "History techniques of the native model: none." in card
    assert "Dropped by this export: none" in card


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


@pytest.mark.parametrize(
    ("family", "changes", "named"),
    [
        ("qwen3-moe", {"decoder_sparse_step": 2}, "decoder_sparse_step 2"),
        ("qwen3-moe", {"mlp_only_layers": [0]}, "mlp_only_layers [0]"),
        ("qwen3", {"attention_bias": True}, "attention_bias=true (biases on q, k, v and o)"),
        ("llama", {"mlp_bias": True}, "mlp_bias=true"),
    ],
)
def test_unsupported_family_switches_are_named(tmp_path, family, changes, named):
    hf_checkpoint(tmp_path, family)
    edit_config(tmp_path, **changes)
    assert named in one_line_error(load_pretrained, tmp_path)


def test_family_defaults_apply_where_config_json_is_silent():
    """What transformers assumes for a field config.json leaves out: Qwen3's head_dim is 128
    whatever the width, Qwen3-MoE renormalizes only with norm_topk_prob, Mixtral always."""
    shape = SHAPE | {"rms_norm_eps": 1e-6}
    qwen3 = config_from_hf(shape | {"architectures": ["Qwen3ForCausalLM"]})
    assert (qwen3.head_dimension, qwen3.qk_norm, qwen3.n_experts) == (128, True, 1)
    moe = shape | QWEN3_MOE | {"architectures": ["Qwen3MoeForCausalLM"]}
    assert config_from_hf(moe).head_dimension == 16
    assert not config_from_hf(moe).router_renormalize
    assert config_from_hf(moe | {"norm_topk_prob": True}).router_renormalize
    renamed = {k: v for k, v in moe.items() if k != "num_experts"} | {"num_local_experts": 4}
    assert config_from_hf(renamed).n_experts == 4  # as transformers 5 writes it
    mixtral = shape | {"architectures": ["MixtralForCausalLM"], "num_local_experts": 4}
    assert config_from_hf(mixtral | {"num_experts_per_tok": 2}).router_renormalize


def test_unsupported_rope_scaling_is_named(tmp_path):
    hf_checkpoint(tmp_path)
    edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0})
    assert "'yarn'" in one_line_error(load_pretrained, tmp_path)


def test_missing_files_are_named(tmp_path):
    assert "config.json" in one_line_error(load_pretrained, tmp_path)
    hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "model.safetensors" in one_line_error(load_pretrained, tmp_path)
