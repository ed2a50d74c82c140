"""Key/value caches for a fixed number of slots, one request each, kept after the request ends.

Every layer's keys and values live in one tensor per layer, [slots, kv heads, capacity, width],
allocated once: a decoding step writes each row's new positions in place and attends to a slice
of it, so no step re-concatenates a cache. A slot remembers the tokens its cache holds; the next
request whose tokens begin the same way (the next keystroke) resumes from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from zen_coder.model.config import ModelConfig


@dataclass(frozen=True)
class Channels:
    """A request's history channels, the side inputs the model was trained with: repository id,
    language id and temporal position (0 = unknown for the first two). The temporal bias is a
    function of the distance between two tokens' times, so one time for a whole prompt changes
    nothing: it matters where a prompt mixes times (`EngineRequest.times`)."""

    repo: int = 0
    language: int = 0
    time: int = 0


@dataclass
class Slot:
    """What one slot's cache holds: `tokens` at positions 0..n-1 with their `times`, computed
    under `routing` (repository and language ids). Each of these changes the keys, so a cache is
    reused only for a request that agrees on all of them over the reused prefix."""

    index: int
    tokens: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    routing: tuple[int, int] = (0, 0)
    busy: bool = False
    last_used: float = 0.0

    def reusable(self, ids: list[int], times: list[int], channels: Channels) -> int:
        """How many of `ids` (with `times`) this slot's cache already holds. The last token is
        always recomputed: its logits are what the request needs first."""
        if (channels.repo, channels.language) != self.routing:
            return 0
        count = common_prefix(self.tokens, ids[:-1])
        return common_prefix(self.times[:count], times[:count])

    def start(self, cached: int, channels: Channels) -> None:
        """Keep the first `cached` positions for a request under `channels`."""
        del self.tokens[cached:], self.times[cached:]
        self.routing, self.busy = (channels.repo, channels.language), True

    def extend(self, tokens: list[int], times: list[int]) -> None:
        self.tokens.extend(tokens)
        self.times.extend(times)


def common_prefix(a: list[int], b: list[int]) -> int:
    count = min(len(a), len(b))
    for index in range(count):
        if a[index] != b[index]:
            return index
    return count


def choose_slot(
    slots: list[Slot], ids: list[int], times: list[int], channels: Channels
) -> Slot | None:
    """The idle slot whose cache shares the longest prefix with `ids`, else the least recently
    used idle one; None when every slot is busy."""
    idle = [slot for slot in slots if not slot.busy]
    if not idle:
        return None
    return max(idle, key=lambda slot: (slot.reusable(ids, times, channels), -slot.last_used))


class SlotCaches:
    """The keys and values of every slot and layer. `capacity` positions per slot, plus `spare`
    positions where padded rows of a batch (rows with fewer new tokens than the longest) write
    what is never read."""

    def __init__(
        self,
        config: ModelConfig,
        slots: int,
        capacity: int,
        spare: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        key_width = config.head_dimension
        if config.temporal_attention:
            key_width += 2 * config.temporal_frequencies  # the keys' temporal features
        shape = (slots, config.n_kv_heads, capacity + spare)
        self.keys = [
            torch.zeros(*shape, key_width, device=device, dtype=dtype)
            for _ in range(config.n_layers)
        ]
        # Values are stored as wide as keys, the rest zeros: attention pads them to that width
        # anyway, and padding the whole cache at every step would copy it.
        self.values = [
            torch.zeros(*shape, key_width, device=device, dtype=dtype)
            for _ in range(config.n_layers)
        ]
        self.capacity, self.spare, self.device = capacity, spare, device

    def batch(self, slots: list[int], lengths: list[int], counts: list[int]) -> SlotBatch:
        """A forward pass's view: row r writes `counts[r]` new tokens to slot `slots[r]` after
        its `lengths[r]` cached positions."""
        return SlotBatch(self, slots, lengths, counts)


class SlotBatch:
    """`ZenCoder.forward`'s cache for one step over some slots (the `Cache` protocol), with the
    positions and key mask to pass along: row r's token t sits at lengths[r] + t and sees keys
    0..lengths[r] + t of its own slot."""

    length = 0  # unused: the positions are explicit

    def __init__(
        self, caches: SlotCaches, slots: list[int], lengths: list[int], counts: list[int]
    ) -> None:
        self.caches = caches
        width = max(counts)
        device = caches.device
        offsets = torch.arange(width, device=device)
        start = torch.tensor(lengths, device=device)
        self.positions = start[:, None] + offsets  # [A, T]
        self.keys = int(max(length + width for length in lengths))
        key_index = torch.arange(self.keys, device=device)
        self.key_mask = (key_index <= self.positions[..., None])[:, None]  # [A, 1, T, keys]
        self.rows = torch.tensor(slots, device=device)
        first = slots[0]
        contiguous = slots == list(range(first, first + len(slots)))
        # Consecutive slots are read as a view; others are gathered (one copy per layer).
        self.window = slice(first, first + len(slots)) if contiguous else None

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the rows' new keys and values [A, K, T, width] at their positions; return every
        key and value of their slots up to the batch's longest [A, K, keys, width]."""
        stored_keys, stored_values = self.caches.keys[layer], self.caches.values[layer]
        rows, positions = self.rows[:, None], self.positions
        stored_keys[rows, :, positions] = keys.transpose(1, 2)
        stored_values[rows, :, positions, : values.shape[-1]] = values.transpose(1, 2)
        if self.window is not None:
            return (
                stored_keys[self.window, :, : self.keys],
                stored_values[self.window, :, : self.keys],
            )
        return (
            stored_keys[:, :, : self.keys].index_select(0, self.rows),
            stored_values[:, :, : self.keys].index_select(0, self.rows),
        )

    def advance(self, positions: int) -> None:
        """Nothing: the engine commits each row's length once it knows which drafted tokens
        were accepted."""
