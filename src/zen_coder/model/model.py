"""The zen-coder transformer: a Mixtral-style mixture of experts that knows its git history.

Read top to bottom: rotary embeddings, attention, the mixture-of-experts feed-forward, a block,
the model, its losses and generation. Shapes: B batch, T tokens, D model width, H query heads,
K key/value heads, Hd head width, E experts, k experts per token, F expert width.

Every token carries side channels from `zen-coder prepare`: repository id, language id,
temporal position (the history position of the change it belongs to) and segment (its document
in a packed sequence). The card's four techniques use them, each behind a switch:
    repository embedding   h0 = embed(token) + R[repo],          R[0] = 0 (unknown repository)
    temporal attention     score(q, k) += b_layer,head(time_q - time_k), a learned Fourier series
    language routing       router logits += G_layer[language],   G[0] = 0 (unknown language)
    contrastive loss       InfoNCE over documents' pooled states; same repository = positive
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from zen_coder.model.config import ModelConfig

IGNORE = -100


# -- rotary position embeddings (Hugging Face's rotate-half layout) ---------------------------


def rope_frequencies(config: ModelConfig) -> Tensor:
    """Inverse frequencies of the rotary embedding, with long-context scaling applied."""
    dim = config.head_dimension
    inverse = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if config.rope_scaling == "linear":
        inverse = inverse / config.rope_factor
    elif config.rope_scaling == "llama3":
        # Llama 3.1: stretch low frequencies by `factor`, keep high ones, blend in between.
        wavelength = 2 * math.pi / inverse
        low = config.rope_original_context / config.rope_low_freq_factor
        high = config.rope_original_context / config.rope_high_freq_factor
        smooth = (config.rope_original_context / wavelength - config.rope_low_freq_factor) / (
            config.rope_high_freq_factor - config.rope_low_freq_factor
        )
        blended = (1 - smooth) * inverse / config.rope_factor + smooth * inverse
        inverse = torch.where(wavelength > low, inverse / config.rope_factor, inverse)
        middle = (wavelength <= low) & (wavelength >= high)
        inverse = torch.where(middle, blended, inverse)
    return inverse.float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply the rotation: x [B, heads, T, Hd], cos/sin [B, 1, T, Hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def document_positions(segment: Tensor) -> Tensor:
    """Each token's position within its document (segment) [B, T]: documents start at 0."""
    B, T = segment.shape
    starts = torch.ones_like(segment, dtype=torch.bool)
    starts[:, 1:] = segment[:, 1:] != segment[:, :-1]
    index = torch.arange(T, device=segment.device).expand(B, T)
    start_index = torch.cummax(torch.where(starts, index, 0), dim=1).values
    return index - start_index


# -- attention ----------------------------------------------------------------------------------


def temporal_frequencies(config: ModelConfig) -> Tensor:
    """Angular frequencies of the temporal bias: periods from 3 to 4 x temporal_max_distance,
    geometrically spaced, so near distances are told apart and far ones do not alias."""
    count = config.temporal_frequencies
    periods = torch.logspace(
        math.log10(3.0), math.log10(4.0 * config.temporal_max_distance), count, dtype=torch.float64
    )
    return (2 * math.pi / periods).float()


@dataclass
class AttentionContext:
    """What every layer's attention needs, computed once per forward pass."""

    cos: Tensor
    sin: Tensor
    mask: Tensor | None = None  # bool [B, 1, Tq, Tk]: True where a query may see a key
    causal: bool = False  # no mask needed: plain causal attention (the fast path)
    time_cos: Tensor | None = None  # cos/sin(frequency * time) [B, 1, T, M], temporal attention
    time_sin: Tensor | None = None
    block_mask: object | None = None  # FlexAttention's document-causal mask, when attention="flex"
    flex_attention: Callable | None = None  # and the FlexAttention to apply it with


class Cache(Protocol):
    """Where attention keeps the keys and values of earlier positions. `update` stores a layer's
    new ones and returns every key and value its queries attend to; `advance` is told, after a
    forward pass, how many positions it added. `KVCache` is one sequence batch's; a caller that
    keeps its own layout (an engine with a cache per request) passes the positions and the key
    mask to `ZenCoder.forward` itself."""

    length: int

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]: ...

    def advance(self, positions: int) -> None: ...


class KVCache:
    """Keys and values of earlier positions, per layer, for incremental decoding."""

    def __init__(self) -> None:
        self.keys: list[Tensor | None] = []
        self.values: list[Tensor | None] = []
        self.length = 0

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        while len(self.keys) <= layer:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[layer] is not None:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def advance(self, positions: int) -> None:
        self.length += positions


class Attention(nn.Module):
    """Grouped-query attention; with temporal attention, a learned bias on temporal distance.

    The bias b_h(d) = sum_m c[h, m] cos(w_m d) + s[h, m] sin(w_m d) of the distance
    d = time_q - time_k is a learned Fourier series per head. Since cos(w(a - b)) and
    sin(w(a - b)) factor into functions of a and of b, it is added to the score by appending 2M
    features to every query and key: q gets (c cos(w a) + s sin(w a), c sin(w a) - s cos(w a)),
    k gets (cos(w b), sin(w b)). So SDPA and Flash Attention compute it with no T x T tensor.
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.head_dim = config.head_dimension
        heads, kv_heads, width = config.n_heads, config.n_kv_heads, config.head_dimension
        bias = config.attention_bias
        self.q = nn.Linear(config.d_model, heads * width, bias=bias)
        self.k = nn.Linear(config.d_model, kv_heads * width, bias=bias)
        self.v = nn.Linear(config.d_model, kv_heads * width, bias=bias)
        self.o = nn.Linear(heads * width, config.d_model, bias=False)
        # Qwen3's q/k norms: one weight over the head dimension, shared by every head. Applied
        # per head, so a split of q and k by heads leaves each rank the whole norm.
        self.q_norm = nn.RMSNorm(width, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(width, eps=config.norm_eps) if config.qk_norm else None
        # The Fourier coefficients (c, s) of every head, head-major, as the weight of a linear
        # map of a constant: split by heads like q, so tensor parallelism shards both alike.
        self.frequencies = config.temporal_frequencies
        self.temporal = (
            nn.Linear(1, heads * 2 * config.temporal_frequencies, bias=False)
            if config.temporal_attention
            else None
        )

    def forward(self, x: Tensor, context: AttentionContext, cache: Cache | None) -> Tensor:
        B, T, _ = x.shape
        # -1: the heads this module computes (all of them, or a tensor-parallel share).
        q = self.q(x).view(B, T, -1, self.head_dim)  # [B, T, H, Hd]
        k = self.k(x).view(B, T, -1, self.head_dim)  # [B, T, K, Hd]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, Hd], [B, K, T, Hd]
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = rotate(q, context.cos, context.sin), rotate(k, context.cos, context.sin)
        if self.temporal is not None and context.time_cos is not None:
            q, k = self._with_time(q, k, context.time_cos, context.time_sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        scale = self.head_dim**-0.5
        if context.block_mask is not None:
            # FlexAttention takes values narrower than queries and keys.
            y = context.flex_attention(
                q, k, v, block_mask=context.block_mask, scale=scale, enable_gqa=True
            )
        else:
            # SDPA kernels want one width for q, k and v: pad the values, then drop the padding.
            # A cache may hand back values stored padded already (a copy per step saved).
            if v.shape[-1] != q.shape[-1]:
                v = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=context.mask,
                is_causal=context.causal,
                scale=scale,
                enable_gqa=True,
            )[..., : self.head_dim]
        return self.o(y.transpose(1, 2).reshape(B, T, -1))

    def _with_time(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        # A [1, 1] input: with a 1-D one the product is squeezed in place, which selective
        # activation checkpointing refuses (it keeps the products' outputs unchanged).
        table = self.temporal(q.new_ones(1, 1, dtype=self.temporal.weight.dtype))
        c, s = table.view(-1, 2, 1, self.frequencies).unbind(1)  # each [H, 1, M]
        # Scaled by sqrt(Hd) so that SDPA's 1/sqrt(Hd) leaves the bias itself in the score.
        root = self.head_dim**0.5
        q_time = torch.cat([c * cos + s * sin, c * sin - s * cos], dim=-1) * root  # [B, H, T, 2M]
        k_time = torch.cat([cos, sin], dim=-1).expand(-1, k.shape[1], -1, -1)  # [B, K, T, 2M]
        q = torch.cat([q, q_time.to(q.dtype)], dim=-1)
        k = torch.cat([k, k_time.to(k.dtype)], dim=-1)
        return q, k


_compiled_flex_attention: Callable | None = None


def _flex_attention() -> Callable:
    """FlexAttention fuses into one kernel only when compiled (uncompiled, it materializes the
    scores). Compiled once, on first use: wrapping it costs a second and a half at import."""
    global _compiled_flex_attention
    if not torch.cuda.is_available():
        return flex_attention  # no CPU backward either way; eager keeps CPU runs uncompiled
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention)
    return _compiled_flex_attention


# -- mixture of experts -------------------------------------------------------------------------


@dataclass
class RouterStats:
    """Per-layer routing outcome, for the balance losses and the expert-bias update."""

    balance_loss: Tensor
    z_loss: Tensor
    load: Tensor  # tokens routed to each expert [E]


class Experts(nn.Module):
    """E SwiGLU experts as stacked weights, run on token groups by grouped matrix products.

    A module of its own, so parallelism can treat the experts apart from the router: tensor
    parallelism splits their width (w1 and w3 by rows, w2 by columns) while the router stays
    whole, and each rank's partial outputs are summed.
    """

    def __init__(self, experts: int, width: int, expert_width: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts, expert_width, width))  # gate projection
        self.w3 = nn.Parameter(torch.empty(experts, expert_width, width))  # up projection
        self.w2 = nn.Parameter(torch.empty(experts, width, expert_width))  # down projection

    def forward(self, routed: Tensor, ends: Tensor) -> Tensor:
        """routed [rows, D], grouped by expert, group e ending at row ends[e]; in its dtype.

        Split by tensor parallelism, the weights are DTensors holding a slice of the expert
        width, and the output is this rank's partial sum (parallelize sums them)."""
        dtype = routed.dtype
        w1, w3, w2 = (local_part(weight).to(dtype) for weight in (self.w1, self.w3, self.w2))
        gate = torch._grouped_mm(routed, w1.transpose(1, 2), offs=ends)
        up = torch._grouped_mm(routed, w3.transpose(1, 2), offs=ends)
        hidden = F.silu(gate) * up  # [rows, F]
        return torch._grouped_mm(hidden, w2.transpose(1, 2), offs=ends)


def local_part(weight: Tensor) -> Tensor:
    """The part of a weight this process holds: a sharded weight's (a DTensor's) local slice,
    which grouped products take, or the weight itself.

    DTensor's module is looked up, not imported: a weight is a DTensor only once parallelism
    has loaded it, and importing it would cost every process that loads the model (inference,
    serving) most of a second. The lookup is a constant to torch.compile."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(weight, dtensor.DTensor):
        return weight.to_local()
    return weight


class MoE(nn.Module):
    """SwiGLU experts behind a softmax top-k router; dropless (every token gets its k experts).

    Tokens are sorted by expert into groups and all experts run as one grouped matrix product
    (`torch._grouped_mm`): no Python loop, no host synchronization, and shapes that depend only
    on the number of tokens, so the block compiles to one graph. When gradients flow, each group
    is padded with zero rows to a multiple of GROUP_ALIGN: the weight gradient reduces over a
    group's rows and wants every group 16-byte aligned and non-empty; the padding adds nothing.
    The forward product needs neither, so inference (decoding a few tokens) computes no padding.
    """

    GROUP_ALIGN = 16

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        E, D, Fd = config.n_experts, config.d_model, config.expert_dim
        self.top_k = config.experts_per_token
        self.renormalize = config.router_renormalize
        self.router = nn.Linear(D, E, bias=False)
        self.experts = Experts(E, D, Fd)
        self.language = (
            nn.Parameter(torch.zeros(config.n_languages, E)) if config.language_routing else None
        )
        self.register_buffer(
            "expert_bias", torch.zeros(E) if config.balancing == "bias" else None, persistent=True
        )

    def forward(
        self, x: Tensor, language: Tensor | None, losses: bool = True
    ) -> tuple[Tensor, RouterStats]:
        """x [N, D], the batch's tokens flattened; `losses=False` skips the balance statistics
        (generation needs none)."""
        E = self.router.out_features
        logits = self.router(x).float()  # [N, E], routing in fp32
        if self.language is not None and language is not None:
            logits = logits + self.language[language]
        probs = logits.softmax(dim=-1)
        choice = probs if self.expert_bias is None else probs + self.expert_bias
        chosen = choice.topk(self.top_k, dim=-1).indices  # [N, k]
        weights = probs.gather(-1, chosen)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        flat = chosen.reshape(-1)  # [N*k]
        order = flat.argsort(stable=True)
        tokens = order // self.top_k  # the token of each routed row, grouped by expert
        load = torch.zeros(E, dtype=torch.long, device=x.device)
        load.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would synchronize on GPU
        dtype = _compute_dtype(x)
        routed = x[tokens].to(dtype)  # [N*k, D]
        if torch.is_grad_enabled():
            rows, ends, slot = self._padded_groups(load, flat[order])
            routed = routed.new_zeros(rows, x.shape[1]).index_copy(0, slot, routed)
        else:
            ends, slot = load.cumsum(0).to(torch.int32), None
        out = self.experts(routed, ends)
        if slot is not None:
            out = out[slot]
        combined = out * weights.reshape(-1)[order, None].to(dtype)  # [N*k, D]
        y = torch.zeros_like(x).index_add_(0, tokens, combined.to(x.dtype))
        if not losses:
            return y, RouterStats(logits.new_zeros(()), logits.new_zeros(()), load)
        # Switch/Mixtral balance loss: E * sum over (slot, expert) of the fraction of tokens
        # sent there times the mean router probability; k at perfect balance.
        fraction = F.one_hot(chosen, E).float().mean(dim=0)  # [k, E]
        balance = E * (fraction * probs.mean(dim=0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        return y, RouterStats(balance, z_loss, load)

    def _padded_groups(self, load: Tensor, expert: Tensor) -> tuple[int, Tensor, Tensor]:
        """The padded layout of the routed rows: its row count (a bound that depends only on
        how many rows there are), each group's end offset (int32, the last one at the bound),
        and each routed row's place in it. `expert` [N*k] is each routed row's expert, sorted.

        Every group gets 1 to GROUP_ALIGN rows of padding, so none is empty."""
        align, E = self.GROUP_ALIGN, load.shape[0]
        rows = expert.shape[0] + E * align
        padded = (load // align + 1) * align
        padded_ends = padded.cumsum(0)
        rank = torch.arange(expert.shape[0], device=expert.device) - (load.cumsum(0) - load)[expert]
        slot = (padded_ends - padded)[expert] + rank
        ends = torch.cat([padded_ends[:-1], padded_ends.new_full((1,), rows)]).to(torch.int32)
        return rows, ends, slot

    @torch.no_grad()
    def update_expert_bias(self, load: Tensor, rate: float) -> None:
        """Auxiliary-loss-free balancing: raise the bias of under-loaded experts, lower others."""
        load = load.float()
        self.expert_bias += rate * torch.sign(load.mean() - load)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matrix products run in: autocast's where it is on (grouped products are not
    on its list), else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# -- the transformer ----------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attention = Attention(config, layer)
        self.moe_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.moe = MoE(config)

    def forward(
        self,
        x: Tensor,
        context: AttentionContext,
        language: Tensor | None,
        cache: Cache | None,
        losses: bool,
    ) -> tuple[Tensor, RouterStats]:
        x = x + self.attention(self.attention_norm(x), context, cache)
        B, T, D = x.shape
        flat_language = language.reshape(-1) if language is not None else None
        moe, stats = self.moe(self.moe_norm(x).reshape(B * T, D), flat_language, losses)
        return x + moe.view(B, T, D), stats


@dataclass
class Output:
    logits: Tensor  # [B, T, V]
    loss: Tensor | None = None  # the total training loss, when targets were given
    losses: dict[str, Tensor] = field(default_factory=dict)  # its parts, for logging
    load: list[Tensor] = field(default_factory=list)  # tokens per expert, per layer


class ZenCoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.repo = (
            nn.Embedding(config.n_repos, config.d_model, padding_idx=0)
            if config.repo_embeddings
            else None
        )
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.projection = (
            nn.Linear(config.d_model, config.d_model, bias=False)
            if config.contrastive_loss
            else None
        )
        self.register_buffer("inverse_frequencies", rope_frequencies(config), persistent=False)
        self.register_buffer("time_frequencies", temporal_frequencies(config), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Compute the buffers no checkpoint holds (the rotary and temporal frequencies) in
        place. A model built on the meta device and materialized with `to_empty` has garbage
        there, and loading its weights does not fill them."""
        self.inverse_frequencies.copy_(rope_frequencies(self.config))
        self.time_frequencies.copy_(temporal_frequencies(self.config))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, parameter in self.named_parameters():
            mean, std = self.initial_distribution(name, parameter.dim())
            if std:
                parameter.normal_(mean, std)
            else:
                parameter.fill_(mean)

    def initial_distribution(self, name: str, dim: int) -> tuple[float, float]:
        """The (mean, std) that parameter `name` of `dim` dimensions starts from: GPT-2
        initialization; output projections scaled by depth; technique tables at zero, so each
        technique starts as a no-op and is learned; norm weights at one. A model started on the
        meta device draws each rank's shards from it (`zen_coder.model.weights`)."""
        std = self.config.init_std
        zero = ("attention.temporal.weight", "moe.language", ".bias")
        if name.endswith(zero) or name.startswith("repo."):
            return 0.0, 0.0
        if dim < 2:
            return 1.0, 0.0  # norm weights
        if name.endswith(("attention.o.weight", "moe.experts.w2")):
            return 0.0, std / math.sqrt(2 * self.config.n_layers)
        return 0.0, std

    # -- positions and masks --------------------------------------------------------------------

    def _context(
        self,
        tokens: Tensor,
        segment: Tensor | None,
        time: Tensor | None,
        cache: Cache | None,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> AttentionContext:
        B, T = tokens.shape
        device = tokens.device
        if positions is not None:
            return self._explicit_context(positions, key_mask, time)
        past = cache.length if cache is not None else 0
        # With a cache, `segment` covers the cached positions too [B, past + T], and is always
        # honoured: generation's left padding (segment 0) must stay invisible to the prompt.
        use_segments = segment is not None and (self.config.document_masking or cache is not None)
        if use_segments:
            positions = document_positions(segment)[:, past:]
        else:
            positions = torch.arange(past, past + T, device=device).expand(B, T)
        angles = positions[..., None].float() * self.inverse_frequencies  # [B, T, Hd/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, Hd]
        context = AttentionContext(cos=angles.cos(), sin=angles.sin())
        if self.config.temporal_attention and time is not None:
            phases = time[:, None, :, None].float() * self.time_frequencies  # [B, 1, T, M]
            context.time_cos, context.time_sin = phases.cos(), phases.sin()
        if self.config.attention == "flex" and cache is None:
            context.block_mask = self._block_mask(segment if use_segments else None, B, T)
            context.flex_attention = _flex_attention()
        elif use_segments:
            keys = past + T
            allowed = self._causal(T, keys, device).expand(B, 1, T, keys)
            same = segment[:, None, past:, None] == segment[:, None, None, :]
            index = torch.arange(keys, device=device)
            own = index == index[past:, None]  # each query's own key
            # Padding (segment 0) attends to itself only, so no row is empty.
            context.mask = allowed & (same & (segment[:, None, None, :] > 0) | own)
        elif cache is not None and past and T > 1:
            context.mask = self._causal(T, past + T, device).expand(B, 1, T, past + T)
        else:
            # Plain causal attention; one new query with a cache sees every cached key.
            context.causal = cache is None or past == 0
        return context

    def _explicit_context(
        self, positions: Tensor, key_mask: Tensor, time: Tensor | None
    ) -> AttentionContext:
        """The context for a caller that placed the tokens itself: their positions [B, T] and
        the keys each may see [B, 1, T, keys], in the layout its cache returns them."""
        angles = positions[..., None].float() * self.inverse_frequencies
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        context = AttentionContext(cos=angles.cos(), sin=angles.sin(), mask=key_mask)
        if self.config.temporal_attention and time is not None:
            phases = time[:, None, :, None].float() * self.time_frequencies
            context.time_cos, context.time_sin = phases.cos(), phases.sin()
        return context

    @staticmethod
    def _causal(queries: int, keys: int, device) -> Tensor:
        past = keys - queries
        return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(past)

    def _block_mask(self, segment: Tensor | None, B: int, T: int):
        """FlexAttention's block-sparse (document-)causal mask: no T x T tensor is materialized."""

        def causal(b, h, q_index, k_index):
            return q_index >= k_index

        def document_causal(b, h, q_index, k_index):
            same = segment[b, q_index] == segment[b, k_index]
            return (q_index >= k_index) & (same | (q_index == k_index))

        mask = causal if segment is None else document_causal
        device = self.inverse_frequencies.device
        return create_block_mask(
            mask, B if segment is not None else None, None, T, T, device=device
        )

    # -- forward and losses ---------------------------------------------------------------------

    def forward(
        self,
        tokens: Tensor,
        *,
        repo: Tensor | None = None,
        language: Tensor | None = None,
        time: Tensor | None = None,
        segment: Tensor | None = None,
        targets: Tensor | None = None,
        cache: Cache | None = None,
        last_only: bool = False,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Output:
        """tokens [B, T] and optional side channels [B, T]; targets [B, T] (IGNORE = no loss).

        `last_only` computes the logits of the last position only (generation needs no others).
        `positions` [B, T] and `key_mask` (bool [B, 1, T, keys], True where a query may see a
        key of those `cache.update` returns) go together: a cache with its own layout (one per
        request, rows at different lengths) says where each token sits and what it sees.
        """
        x = self.embed(tokens)  # [B, T, D]
        if self.repo is not None and repo is not None:
            if self.training and self.config.repo_dropout > 0:
                # Whole sequences lose their repository, so the model also works without one.
                kept = torch.rand(repo.shape[0], 1, device=repo.device) >= self.config.repo_dropout
                repo = repo * kept
            x = x + self.repo(repo)
        context = self._context(tokens, segment, time, cache, positions, key_mask)
        stats = []
        for block in self.blocks:
            x, layer_stats = block(x, context, language, cache, targets is not None)
            stats.append(layer_stats)
        if cache is not None:
            cache.advance(tokens.shape[1])
        hidden = self.norm(x)
        if last_only:
            hidden = hidden[:, -1:]
        logits = self.head(hidden)
        output = Output(logits=logits, load=[s.load for s in stats])
        if targets is not None:
            self._losses(output, hidden, targets, stats, repo, segment)
        return output

    def _losses(
        self,
        output: Output,
        hidden: Tensor,
        targets: Tensor,
        stats: list[RouterStats],
        repo: Tensor | None,
        segment: Tensor | None,
    ) -> None:
        config = self.config
        logits = output.logits
        language_model = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE
        )
        losses = {"lm": language_model}
        total = language_model
        if config.balancing == "aux_loss":
            losses["balance"] = torch.stack([s.balance_loss for s in stats]).mean()
            total = total + config.balance_loss_weight * losses["balance"]
        losses["z"] = torch.stack([s.z_loss for s in stats]).mean()
        total = total + config.router_z_loss_weight * losses["z"]
        if self.projection is not None and repo is not None:
            losses["contrastive"] = self.contrastive(hidden, repo, segment)
            total = total + config.contrastive_weight * losses["contrastive"]
        output.loss, output.losses = total, losses

    def contrastive(self, hidden: Tensor, repo: Tensor, segment: Tensor | None) -> Tensor:
        """Supervised InfoNCE over the batch's documents: a document's positives are the other
        documents of its repository (unknown repositories take no part).

        Documents are the (sequence, segment) pairs of packed sequences, pooled by mean.
        """
        B, T, D = hidden.shape
        if segment is None:
            segment = torch.ones(B, T, dtype=torch.long, device=hidden.device)
        document = segment + (torch.arange(B, device=hidden.device) * (T + 1))[:, None]
        valid = (segment > 0) & (repo > 0)
        ids, inverse = torch.unique(document[valid], return_inverse=True)
        if ids.numel() < 2:
            return self.no_contrast(hidden)
        pooled = torch.zeros(ids.numel(), D, dtype=hidden.dtype, device=hidden.device)
        pooled.index_add_(0, inverse, hidden[valid])
        counts = torch.bincount(inverse, minlength=ids.numel()).clamp(min=1)
        pooled = F.normalize(self.projection(pooled / counts[:, None]).float(), dim=-1)
        doc_repo = torch.zeros(ids.numel(), dtype=repo.dtype, device=repo.device)
        doc_repo[inverse] = repo[valid]
        similarity = pooled @ pooled.T / self.config.contrastive_temperature
        eye = torch.eye(ids.numel(), dtype=torch.bool, device=hidden.device)
        similarity = similarity.masked_fill(eye, float("-inf"))
        same = doc_repo[:, None] == doc_repo[None, :]
        positive = same & ~eye
        # An anchor needs a positive to pull and a negative to push: with one repository in the
        # batch the loss would only collapse every document onto one point.
        anchors = positive.any(dim=1) & (~same).any(dim=1)
        if not anchors.any():
            return self.no_contrast(hidden)
        log_prob = similarity.log_softmax(dim=1)
        positives = positive.sum(dim=1).clamp(min=1)
        per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positives
        return per_anchor[anchors].mean()

    def no_contrast(self, hidden: Tensor) -> Tensor:
        """A zero loss that still reaches the projection: under data parallelism every rank must
        produce the same gradients to reduce, whatever its own batch holds."""
        return self.projection(hidden[:, 0]).sum() * 0.0

    @torch.no_grad()
    def update_expert_biases(self, loads: list[Tensor]) -> None:
        """After an optimizer step: nudge each layer's expert bias toward balance."""
        if self.config.balancing == "bias":
            for block, load in zip(self.blocks, loads, strict=True):
                block.moe.update_expert_bias(load, self.config.expert_bias_rate)

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_id: int | None = None,
        repo: Tensor | None = None,
        language: Tensor | None = None,
        time: Tensor | None = None,
        segment: Tensor | None = None,
        finished: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue `tokens` [B, T] with a key/value cache; greedy when temperature is 0.

        Side channels, when given for the prompt, are carried over to the new tokens from the
        prompt's last position. Prompts of different lengths go in one batch left-padded, the
        padding in `segment` 0 and the prompt in segment 1: each row then computes what it would
        alone. `finished`, given the tokens generated so far [B, t], marks rows that need no
        more (a stop sequence appeared); generation ends when every row is finished or at EOS.
        """
        cache = KVCache()
        channels = {"repo": repo, "language": language, "time": time}
        step = {name: value for name, value in channels.items() if value is not None}
        logits = self(tokens, cache=cache, last_only=True, segment=segment, **step).logits[:, -1]
        generated = []
        done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(max_new_tokens):
            next_token = sample_token(logits, temperature, top_p, generator)
            if eos_id is not None:
                next_token = torch.where(done, eos_id, next_token)
                done |= next_token == eos_id
            generated.append(next_token)
            if finished is not None:
                done |= finished(torch.stack(generated, dim=1))
            if done.all():
                break
            last = {name: value[:, -1:] for name, value in step.items()}
            if segment is not None:
                segment = torch.cat([segment, segment[:, -1:]], dim=1)
            logits = self(
                next_token[:, None], cache=cache, last_only=True, segment=segment, **last
            ).logits[:, -1]
        return torch.cat([tokens, torch.stack(generated, dim=1)], dim=1)


def sample_token(
    logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """The next token of each row of `logits` [B, V]: argmax at temperature 0, else drawn from
    the tempered distribution cut to its top-p nucleus."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = (logits.float() / temperature).softmax(dim=-1)
    if top_p < 1.0:
        sorted_probs, indices = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(-1, indices, sorted_probs * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_token_targets(tokens: Tensor, segment: Tensor | None, pad_id: int | None = None) -> Tensor:
    """Targets for next-token prediction in packed sequences: no target across a document
    boundary, none for padding, none after the last position."""
    targets = torch.full_like(tokens, IGNORE)
    targets[:, :-1] = tokens[:, 1:]
    if segment is not None:
        crossing = segment[:, 1:] != segment[:, :-1]
        targets[:, :-1] = targets[:, :-1].masked_fill(crossing | (segment[:, 1:] == 0), IGNORE)
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, IGNORE)
    return targets
