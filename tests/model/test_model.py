"""The native model: causality, caching, packing, routing losses, the four techniques, presets."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from zen_coder.errors import ZenCoderError
from zen_coder.model.config import ModelConfig, preset
from zen_coder.model.model import (
    IGNORE,
    MoE,
    ZenCoder,
    next_token_targets,
    rope_frequencies,
)
from zen_coder.model.summary import parameter_counts

TINY = dataclasses.replace(preset("tiny").with_techniques(), n_repos=6, vocab_size=256, n_layers=2)


def build(config: ModelConfig = TINY, seed: int = 0, randomize_techniques: bool = True) -> ZenCoder:
    torch.manual_seed(seed)
    model = ZenCoder(config).eval()
    if randomize_techniques:  # technique tables start at zero (a no-op); make them matter
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(("temporal.weight", "language")) or name.startswith("repo."):
                    parameter.normal_(std=0.5)
    return model


def channels(B: int = 2, T: int = 32, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "tokens": torch.randint(0, TINY.vocab_size, (B, T), generator=generator),
        "repo": (torch.arange(B) % (TINY.n_repos - 1) + 1)[:, None].expand(B, T),
        "language": (torch.arange(B) * 3 % (TINY.n_languages - 1) + 1)[:, None].expand(B, T),
        "time": torch.randint(0, 40, (B, T), generator=generator).sort(dim=1).values,
    }


def logits(model: ZenCoder, inputs: dict, **extra) -> torch.Tensor:
    arguments = {**inputs, **extra}
    return model(arguments.pop("tokens"), **arguments).logits


@pytest.mark.parametrize("with_segments", [False, True])
def test_a_later_token_never_changes_an_earlier_output(with_segments):
    model, inputs = build(), channels()
    if with_segments:
        inputs["segment"] = torch.tensor([[1] * 12 + [2] * 20, [1] * 32])
    before = logits(model, inputs)
    changed = dict(inputs, tokens=inputs["tokens"].clone())
    changed["tokens"][:, 20] = (changed["tokens"][:, 20] + 1) % TINY.vocab_size
    after = logits(model, changed)
    assert torch.allclose(before[:, :20], after[:, :20], atol=1e-5)
    assert not torch.allclose(before[:, 20:], after[:, 20:], atol=1e-3)


def test_packed_documents_do_not_see_each_other():
    model = build(TINY.without_techniques())
    first = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(3))
    second = torch.randint(0, 256, (1, 14), generator=torch.Generator().manual_seed(4))
    packed = torch.cat([first, second], dim=1)
    segment = torch.tensor([[1] * 10 + [2] * 14])
    together = model(packed, segment=segment).logits
    alone = model(second).logits
    assert torch.allclose(together[:, 10:], alone, atol=1e-5)  # positions restart per document


def test_greedy_generation_with_the_cache_equals_full_forward():
    model, inputs = build(), channels(B=2, T=12)
    prompt = {key: value[:, :12] for key, value in inputs.items()}
    out = model.generate(
        prompt["tokens"], 10, repo=prompt["repo"], language=prompt["language"], time=prompt["time"]
    )
    new = out[:, 12:]
    full_time = torch.cat([prompt["time"], prompt["time"][:, -1:].expand(2, 10)], dim=1)
    side = {
        "repo": inputs["repo"][:, :1].expand(2, 22),
        "language": inputs["language"][:, :1].expand(2, 22),
        "time": full_time,
    }
    full = model(out[:, :-1], **{k: v[:, :-1] for k, v in side.items()}).logits
    assert torch.equal(full[:, 11:].argmax(-1), new)


def test_balance_and_z_losses_on_a_hand_computed_example():
    config = dataclasses.replace(
        TINY,
        d_model=8,
        n_heads=1,
        n_kv_heads=1,
        n_experts=2,
        experts_per_token=1,
        expert_dim=8,
        language_routing=False,
    )
    moe = MoE(config)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :2] = torch.tensor(
            [[math.log(0.8), math.log(0.3)], [math.log(0.2), math.log(0.7)]]
        )
        for weight in (moe.experts.w1, moe.experts.w2, moe.experts.w3):
            weight.normal_()
    x = torch.eye(2, 8)  # token 1 routes 0.8/0.2 (expert 0), token 2 0.3/0.7 (expert 1)
    _, stats = moe(x, None)
    # fraction of tokens per expert [0.5, 0.5], mean probability [0.55, 0.45]:
    # 2 * (0.5 * 0.55 + 0.5 * 0.45) = 1.0; the probabilities sum to one, so logsumexp = 0.
    assert stats.balance_loss.item() == pytest.approx(1.0, abs=1e-6)
    assert stats.z_loss.item() == pytest.approx(0.0, abs=1e-6)
    assert stats.load.tolist() == [1, 1]


def experts_by_hand(moe: MoE, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Each token's own top-k experts, weighted by their renormalized router probabilities:
    one plain product per expert over the tokens that chose it."""
    chosen = probs.topk(moe.top_k).indices
    weights = probs.gather(-1, chosen)
    weights = weights / weights.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    w1, w2, w3 = moe.experts.w1, moe.experts.w2, moe.experts.w3
    for expert in range(w1.shape[0]):
        token, slot = (chosen == expert).nonzero(as_tuple=True)
        hidden = torch.nn.functional.silu(x[token] @ w1[expert].T) * (x[token] @ w3[expert].T)
        expected.index_add_(0, token, weights[token, slot, None] * (hidden @ w2[expert].T))
    return expected


def test_grouped_experts_compute_each_tokens_own_experts_and_their_gradients():
    """The grouped product (sorted, padded groups, several experts with no token at all) gives
    what each token's own k experts give, and the same gradients to every weight."""
    config = dataclasses.replace(TINY, language_routing=False)
    moe = MoE(config)
    torch.nn.init.normal_(moe.router.weight)
    for weight in (moe.experts.w1, moe.experts.w2, moe.experts.w3):
        torch.nn.init.normal_(weight, std=0.1)
    x = torch.randn(5, config.d_model)
    upstream = torch.randn(5, config.d_model)
    y, stats = moe(x, None)
    grouped = torch.autograd.grad((y * upstream).sum(), list(moe.experts.parameters()))
    expected = experts_by_hand(moe, x, (x @ moe.router.weight.T).softmax(-1))
    reference = torch.autograd.grad((expected * upstream).sum(), list(moe.experts.parameters()))
    assert torch.allclose(y, expected, atol=1e-5)
    for mine, theirs in zip(grouped, reference, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
    assert int(stats.load.sum()) == 5 * config.experts_per_token
    assert (stats.load == 0).any()  # empty groups were exercised
    with torch.no_grad():  # inference's layout: no padding, empty groups
        inference, _ = moe(x, None, losses=False)
    assert torch.allclose(inference, y, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = moe(x, None)
    assert low.dtype == torch.float32
    assert torch.allclose(low, expected, atol=0.05 * expected.abs().max().item())


CHANNEL_OF = {
    "repo_embeddings": "repo",
    "temporal_attention": "time",
    "language_routing": "language",
}


@pytest.mark.parametrize("technique", list(CHANNEL_OF))
def test_each_technique_changes_outputs_only_when_switched_on(technique):
    inputs = channels()
    channel = CHANNEL_OF[technique]
    other = dict(inputs)
    other[channel] = inputs[channel].flip(0) if channel != "time" else inputs["time"] * 3 + 1
    assert not torch.equal(other[channel], inputs[channel])
    on = build(dataclasses.replace(TINY.without_techniques(), **{technique: True}))
    assert not torch.allclose(logits(on, inputs), logits(on, other), atol=1e-4)
    off = build(TINY.without_techniques())
    assert torch.equal(logits(off, inputs), logits(off, other))


def test_techniques_at_their_initial_zero_are_a_no_op():
    standard = build(TINY.without_techniques(), randomize_techniques=False)
    full = build(TINY, randomize_techniques=False)
    full.load_state_dict(standard.state_dict(), strict=False)  # shared weights; tables stay zero
    inputs = channels()
    assert torch.allclose(logits(standard, inputs), logits(full, inputs), atol=1e-5)


def test_contrastive_loss_only_when_switched_on():
    inputs = channels(B=4, T=16)
    segment = torch.tensor([[1] * 8 + [2] * 8] * 4)
    repo = torch.tensor([[1] * 8 + [2] * 8, [1] * 16, [2] * 16, [3] * 16])
    targets = next_token_targets(inputs["tokens"], segment)
    batch = dict(inputs, repo=repo, segment=segment, targets=targets)
    on = build(
        dataclasses.replace(TINY.without_techniques(), contrastive_loss=True, repo_embeddings=True)
    )
    output = on(batch.pop("tokens"), **batch)
    assert output.losses["contrastive"].item() > 0
    off = build(dataclasses.replace(TINY.without_techniques(), repo_embeddings=True))
    batch = dict(inputs, repo=repo, segment=segment, targets=targets)
    assert "contrastive" not in off(batch.pop("tokens"), **batch).losses


def test_contrastive_loss_needs_another_repository_in_the_batch():
    model = build(dataclasses.replace(TINY.without_techniques(), contrastive_loss=True))
    hidden = torch.randn(2, 8, TINY.d_model)
    segment = torch.tensor([[1] * 4 + [2] * 4] * 2)
    one_repository = torch.ones(2, 8, dtype=torch.long)
    zero = model.contrastive(hidden, one_repository, segment)
    zero.backward()
    # Still a (zero) gradient for the projection, so data-parallel ranks reduce the same tensors.
    assert zero.item() == 0.0 and model.projection.weight.grad is not None
    two = torch.tensor([[1] * 8, [2] * 8])
    assert model.contrastive(hidden, two, segment).item() > 0


def test_loss_parts_and_auxiliary_free_balancing():
    config = dataclasses.replace(TINY.without_techniques(), balancing="bias")
    model = build(config).train()
    inputs = channels()
    out = model(inputs["tokens"], targets=next_token_targets(inputs["tokens"], None))
    assert set(out.losses) == {"lm", "z"}
    load = torch.tensor([9] + [1] * (config.n_experts - 1))
    model.update_expert_biases([load] * config.n_layers)
    bias = model.blocks[0].moe.expert_bias
    assert bias[0] < 0 and (bias[1:] > 0).all()


def test_flex_attention_computes_what_sdpa_does():
    inputs = channels(B=2, T=16)
    inputs["segment"] = torch.tensor([[1] * 6 + [2] * 10, [1] * 16])
    sdpa = build(TINY)
    flex = build(dataclasses.replace(TINY, attention="flex"))
    flex.load_state_dict(sdpa.state_dict())
    with warnings.catch_warnings(), torch.no_grad():  # FlexAttention has no CPU backward
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is not compiled
        assert torch.allclose(logits(sdpa, inputs), logits(flex, inputs), atol=1e-4)


def test_next_token_targets_stop_at_documents_and_padding():
    tokens = torch.tensor([[5, 6, 7, 8, 9, 1]])
    segment = torch.tensor([[1, 1, 2, 2, 2, 0]])
    targets = next_token_targets(tokens, segment, pad_id=1)
    assert targets.tolist() == [[6, IGNORE, 8, 9, IGNORE, IGNORE]]


def test_temporal_attention_depends_on_distances_only():
    model, inputs = (
        build(dataclasses.replace(TINY.without_techniques(), temporal_attention=True)),
        channels(),
    )
    shifted = dict(inputs, time=inputs["time"] + 17)
    assert torch.allclose(logits(model, inputs), logits(model, shifted), atol=1e-4)


def test_the_temporal_bias_is_the_fourier_series_it_claims():
    config = dataclasses.replace(
        TINY.without_techniques(), temporal_attention=True, n_heads=1, n_kv_heads=1, d_model=32
    )
    model = build(config)
    attention = model.blocks[0].attention
    q = torch.zeros(1, 1, 2, attention.head_dim)
    k = torch.zeros(1, 1, 2, attention.head_dim)
    time = torch.tensor([[3.0, 10.0]])
    phases = time[:, None, :, None] * model.time_frequencies
    q2, k2 = attention._with_time(q, k, phases.cos(), phases.sin())
    score = (q2[0, 0, 1] @ k2[0, 0, 0]) * attention.head_dim**-0.5  # query at 10, key at 3
    c, s = attention.temporal.weight.view(2, -1)
    w = model.time_frequencies
    expected = (c * torch.cos(w * 7) + s * torch.sin(w * 7)).sum()
    assert score.item() == pytest.approx(expected.item(), abs=1e-4)


def test_llama3_rope_scaling_stretches_only_low_frequencies():
    base = rope_frequencies(dataclasses.replace(TINY, rope_theta=500_000.0))
    scaled = rope_frequencies(
        dataclasses.replace(TINY, rope_scaling="llama3", rope_factor=8.0, rope_original_context=64)
    )
    assert scaled[0] == pytest.approx(base[0])  # highest frequency untouched
    assert scaled[-1] == pytest.approx(base[-1] / 8)  # lowest frequency stretched


def test_preset_parameter_counts():
    card = parameter_counts(preset("zen-coder-70b").without_techniques())
    assert 70.5e9 < card["total"] < 70.7e9  # the card's 70B
    assert 28.2e9 < card["active"] < 28.4e9  # not the card's 14B: see docs/model.md
    small = parameter_counts(preset("small"))
    assert 0.85e9 < small["active"] < 1.1e9
    tiny = parameter_counts(preset("tiny"))
    assert tiny["total"] < 5e6 and tiny["active"] < tiny["total"]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ZenCoderError, match="n_heads must be a multiple of n_kv_heads"):
        dataclasses.replace(TINY, n_heads=4, n_kv_heads=3)
    with pytest.raises(ZenCoderError, match="unknown model preset 'huge'"):
        preset("huge")
    with pytest.raises(ZenCoderError, match="d_model and expert_dim must be multiples of 8"):
        dataclasses.replace(TINY, expert_dim=60)


def test_left_padded_prompts_generate_what_each_generates_alone():
    model, lengths = build(), [5, 12, 9]
    prompts = [channels(B=1, T=length, seed=length) for length in lengths]
    width = max(lengths)

    def left_pad(value: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(value, (width - value.shape[1], 0))

    batch = {name: torch.cat([left_pad(p[name]) for p in prompts]) for name in prompts[0]}
    segment = torch.cat([left_pad(torch.ones(1, length, dtype=torch.long)) for length in lengths])
    batched = model.generate(batch.pop("tokens"), 8, segment=segment, **batch)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt.pop("tokens"), 8, **prompt)
        assert torch.equal(batched[row], alone[0, lengths[row] :])


def test_generation_ends_once_every_row_is_finished():
    model, tokens = build(), channels(B=2, T=6)["tokens"]

    def finished(generated: torch.Tensor) -> torch.Tensor:  # rows done after 3 and 5 tokens
        return torch.tensor([generated.shape[1] >= 3, generated.shape[1] >= 5])

    assert model.generate(tokens, 20, finished=finished).shape == (2, 6 + 5)


def test_qk_norms_start_at_one_and_biases_at_zero():
    model = ZenCoder(dataclasses.replace(TINY, qk_norm=True, attention_bias=True))
    for block in model.blocks:
        attention = block.attention
        for norm in (attention.q_norm, attention.k_norm):
            assert norm.weight.shape == (TINY.head_dimension,)
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        for projection in (attention.q, attention.k, attention.v):
            assert not projection.bias.any()
    assert ZenCoder(TINY).blocks[0].attention.q_norm is None
