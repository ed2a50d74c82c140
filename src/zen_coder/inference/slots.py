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

    def batch(self, first: int, lengths: list[int | None], width: int) -> SlotBatch:
        """A forward pass's view of slots first, first + 1, ...: row r feeds `width` tokens
        (some of them padding) after its slot's `lengths[r]` cached positions, or, where
        `lengths[r]` is None, is an idle slot's filler row."""
        return SlotBatch(self, first, lengths, width)


class SlotBatch:
    """`ZenCoder.forward`'s cache for one step over consecutive slots (the `Cache` protocol),
    with the positions and key mask to pass along: row r's token t sits at lengths[r] + t and
    sees keys 0..lengths[r] + t of its own slot.

    The rows are a window of consecutive slots, so the step attends to a view of the caches and
    copies nothing. An idle slot inside the window gets a filler row: it writes to its slot's
    spare positions, past anything a request reads, and its output is dropped. On a CPU that is
    cheaper than gathering the active slots' caches (a copy of every cached key at every step);
    on a GPU it is a row of a batch.
    """

    length = 0  # unused: the positions are explicit

    def __init__(
        self, caches: SlotCaches, first: int, lengths: list[int | None], width: int
    ) -> None:
        self.caches = caches
        device = caches.device
        starts = [caches.capacity if length is None else length for length in lengths]
        offsets = torch.arange(width, device=device)
        self.positions = torch.tensor(starts, device=device)[:, None] + offsets  # [A, T]
        self.keys = max(length + width for length in lengths if length is not None)
        key_index = torch.arange(self.keys, device=device)
        # Filler rows sit past every key, so they see all of them: no row is empty.
        self.key_mask = (key_index <= self.positions[..., None])[:, None]  # [A, 1, T, keys]
        self.rows = torch.arange(first, first + len(lengths), device=device)
        self.window = slice(first, first + len(lengths))

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the rows' new keys and values [A, K, T, width] at their positions; return every
        key and value of their slots up to the batch's longest [A, K, keys, width]."""
        stored_keys, stored_values = self.caches.keys[layer], self.caches.values[layer]
        rows, positions = self.rows[:, None], self.positions
        stored_keys[rows, :, positions] = keys.transpose(1, 2)
        stored_values[rows, :, positions, : values.shape[-1]] = values.transpose(1, 2)
        return (
            stored_keys[self.window, :, : self.keys],
            stored_values[self.window, :, : self.keys],
        )

    def advance(self, positions: int) -> None:
        """Nothing: the engine commits each row's length once it knows which drafted tokens
        were accepted."""
