"""Shuffled controls: a batch's side channel with its information destroyed, its distribution kept.

A history technique that lowers the loss may do so through its information (which repository,
which time, which language) or only through the parameters it adds. A control run trains and
validates the same model with the technique's channel shuffled, so the parameters stay and the
information goes: a gain the control shares is capacity, not history (`train.shuffle`).

- "repo": each document (a segment of a sequence) gets a repository id drawn from the training
  data's, in proportion to their tokens there; 0 (unknown) stays 0. This silences the repository
  embedding and the contrastive loss, which then pulls together documents of random groups.
- "time": each document's token times are permuted among its own tokens: the same times, no
  longer on the tokens they belong to.
- "language": each document gets a language id drawn as the repository ids are; 0 stays 0.

The model knows nothing of it: the trainer applies `Controls` to each batch before the model sees
it, in training and in validation alike, so a control is measured as it was trained. The random
numbers depend only on (seed, step, micro-batch, rank), so a control run resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zen_coder.data.loader import SCAN_ITEMS, open_split
from zen_coder.training.config import CONTROLS

# Separate streams of random numbers, so validation never replays a training micro-batch's.
TRAINING, VALIDATION = 0, 1


@dataclass(frozen=True)
class Controls:
    """The shuffled channels of a run and what their ids are drawn from."""

    channels: frozenset[str]
    seed: int
    # Per channel drawn anew ("repo", "language"): each id's share of the training tokens, id 0's
    # share 0; None where the data has no nonzero id (nothing to draw, nothing to hide).
    weights: dict[str, Tensor | None]

    @classmethod
    def for_data(cls, data: Path, channels: tuple[str, ...], seed: int) -> Controls | None:
        """The controls `channels` name (None for none), drawing ids as the training split
        holds them: one scan of each redrawn channel."""
        if not channels:
            return None
        arrays = open_split(data, "train")
        redrawn = [name for name in ("repo", "language") if name in channels]
        return cls(frozenset(channels), seed, {name: id_weights(arrays[name]) for name in redrawn})

    def apply(
        self, batch: dict[str, Tensor], *, stream: int, step: int, micro: int, rank: int
    ) -> dict[str, Tensor]:
        """`batch` with the controlled channels shuffled; the same arguments, the same result."""
        state = np.random.SeedSequence([self.seed, stream, step, micro, rank]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        batch = dict(batch)
        segment = batch["segment"]
        for name in CONTROLS:  # a fixed order: the same draws whatever order the recipe lists
            if name not in self.channels:
                continue
            if name == "time":
                batch[name] = permute_within_documents(batch[name], segment, generator)
            else:
                batch[name] = redraw_per_document(
                    batch[name], segment, self.weights[name], generator
                )
        return batch


def id_weights(channel: np.ndarray) -> Tensor | None:
    """Each id's share of the nonzero items of `channel` [N, L] (id 0's share 0), or None if it
    has none; read in chunks of rows."""
    counts = np.zeros(1, dtype=np.int64)
    rows = max(1, SCAN_ITEMS // max(channel.shape[1], 1))
    for start in range(0, len(channel), rows):
        chunk = np.bincount(np.asarray(channel[start : start + rows]).ravel())
        counts = np.pad(counts, (0, max(0, len(chunk) - len(counts))))
        counts[: len(chunk)] += chunk
    counts[0] = 0
    if not counts.any():
        return None
    return torch.from_numpy(counts / counts.sum())


def documents(segment: Tensor) -> Tensor:
    """A number per (sequence, segment) pair [B, T], unique in the batch: documents that share a
    segment number in different sequences are different documents."""
    B, T = segment.shape
    return segment + torch.arange(B, device=segment.device)[:, None] * (T + 1)


def redraw_per_document(
    ids: Tensor, segment: Tensor, weights: Tensor | None, generator: torch.Generator
) -> Tensor:
    """`ids` [B, T] with each document's nonzero id replaced by one drawn from `weights`; zeros
    (unknown) and padding (segment 0) stay as they are."""
    if weights is None:
        return ids
    numbers, document = torch.unique(documents(segment), return_inverse=True)
    drawn = torch.multinomial(weights, len(numbers), replacement=True, generator=generator)
    return torch.where((ids > 0) & (segment > 0), drawn[document].to(ids.dtype), ids)


def permute_within_documents(values: Tensor, segment: Tensor, generator: torch.Generator) -> Tensor:
    """`values` [B, T] with each document's values permuted at random among its own positions;
    padding (segment 0) stays as it is."""
    document = documents(segment).flatten()
    # The positions grouped by document, in order, and grouped by document in a random order:
    # both list the same documents in the same order with the same sizes, so the second is a
    # random permutation within each document of the first.
    grouped = torch.argsort(document, stable=True)
    random = torch.randperm(len(document), generator=generator)
    shuffled = random[torch.argsort(document[random], stable=True)]
    flat = values.flatten()
    permuted = torch.empty_like(flat)
    permuted[grouped] = flat[shuffled]
    return torch.where(segment > 0, permuted.view_as(values), values)
