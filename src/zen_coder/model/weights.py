"""Starting a model's weights one tensor at a time: whole on one process, or as each rank's shards.

A model is built on the meta device (no memory), optionally parallelized (its parameters become
DTensors whose local pieces are this rank's shards), materialized empty on its device, and then
filled: each parameter's local piece is computed from its `Source`, which reads from a
safetensors checkpoint only the slice that piece needs (`safe_open(...).get_slice`), or draws it
from the model's initial distribution. Loading a whole model on one process is the same with
every piece whole. So a process holds its own shards plus the one piece being read, never the
whole model.

Sources compose what a base checkpoint needs to become the model: a stored tensor as it is
(`Stored`), one part of a tensor that concatenates two (`Shifted`), per-expert tensors stacked
(`Stacked`), a dense MLP matrix spread over experts (`Upcycled`), rows rearranged by name or
grown by the mean of the existing rows (`Rows`), and values drawn as a new model draws them
(`Initial`). `build` fills whatever has no source from the initial distribution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder

Region = tuple[slice, ...]  # one slice(start, stop) per dimension: the part of a tensor wanted
BLOCK_ELEMENTS = 1 << 22  # a random draw or a mean is computed this many values at a time
VOCABULARY_ROWS = ("embed.weight", "head.weight")  # the parameters with one row per token


def _whole(shape: tuple[int, ...] | torch.Size) -> Region:
    return tuple(slice(0, size) for size in shape)


def _sizes(region: Region) -> list[int]:
    return [part.stop - part.start for part in region]


def _shift(region: Region, dim: int, offset: int) -> Region:
    part = region[dim]
    return (*region[:dim], slice(part.start + offset, part.stop + offset), *region[dim + 1 :])


class Checkpoint:
    """safetensors files, read one tensor (or one slice of it) at a time.

    Each read opens the file, copies the slice out of the memory map and closes it again, so
    nothing of the file stays mapped between reads."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)  # tensor name -> the file that holds it
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in dict.fromkeys(self.files.values()):
            with safe_open(file, framework="pt") as tensor_file:
                for name in tensor_file.keys():  # noqa: SIM118 (safe_open is not a dict)
                    self.shapes[name] = tuple(tensor_file.get_slice(name).get_shape())

    def read(self, name: str, region: Region) -> Tensor:
        """The part `region` of tensor `name`, in float32."""
        with safe_open(self.files[name], framework="pt") as tensor_file:
            return tensor_file.get_slice(name)[region].to(torch.float32, copy=True)


class Source(Protocol):
    """Where the values of one parameter (or buffer) come from, readable in parts."""

    def read(self, region: Region) -> Tensor: ...


@dataclass(frozen=True)
class Stored:
    """A checkpoint tensor as it is."""

    checkpoint: Checkpoint
    name: str

    def read(self, region: Region) -> Tensor:
        return self.checkpoint.read(self.name, region)


@dataclass(frozen=True)
class Shifted:
    """The part of `source` that starts at `offset` along `dim`: one of two matrices that a
    checkpoint concatenates (gate and up projections in one tensor)."""

    source: Source
    dim: int
    offset: int

    def read(self, region: Region) -> Tensor:
        return self.source.read(_shift(region, self.dim, self.offset))


@dataclass(frozen=True)
class Stacked:
    """Dimension 0 stacks one source per index (a checkpoint's per-expert tensors)."""

    parts: tuple[Source, ...]

    def read(self, region: Region) -> Tensor:
        first, rest = region[0], region[1:]
        return torch.stack([self.parts[i].read(rest) for i in range(first.start, first.stop)])


@dataclass(frozen=True)
class Upcycled:
    """A dense MLP matrix ([F, D] gate and up, [D, F] down) as the experts' stacked matrices
    ([E, F', D], [E, D, F']): whole copies (F' = F), or slices of its width (F' = F / E). A
    slice's down projection is scaled by E: then k random experts weighted 1/k each give the
    dense output on average, and all E exactly."""

    dense: Source
    experts: int
    width: int  # F', each expert's share of the width
    width_dim: int  # the width's dimension in the dense matrix: 0 for gate and up, 1 for down
    sliced: bool

    def read(self, region: Region) -> Tensor:
        experts, inner = region[0], region[1:]
        count = experts.stop - experts.start
        if not self.sliced:
            return self.dense.read(inner).expand(count, *_sizes(inner))
        slices = torch.stack(
            [
                self.dense.read(_shift(inner, self.width_dim, expert * self.width))
                for expert in range(experts.start, experts.stop)
            ]
        )
        return slices.mul_(self.experts) if self.width_dim == 1 else slices


@dataclass(frozen=True)
class Rows:
    """The rows of `source` rearranged: row i is the source's row `rows[i]`; a row that is None
    is the mean of all the source's rows (`fill="mean"`: a token new to the base's vocabulary)
    or zero (`fill="zero"`: a repository or language the base never saw)."""

    source: Source
    rows: tuple[int | None, ...]
    source_rows: int
    fill: str

    def read(self, region: Region) -> Tensor:
        wanted, inner = self.rows[region[0]], region[1:]
        values = torch.zeros(len(wanted), *_sizes(inner))
        known = [(row, origin) for row, origin in enumerate(wanted) if origin is not None]
        if known:
            low = min(origin for _, origin in known)
            high = max(origin for _, origin in known) + 1
            block = self.source.read((slice(low, high), *inner))
            rows, origins = zip(*known, strict=True)
            values[list(rows)] = block[[origin - low for origin in origins]]
        missing = [row for row, origin in enumerate(wanted) if origin is None]
        if missing and self.fill == "mean":
            values[missing] = self._mean(inner)
        return values

    def _mean(self, inner: Region) -> Tensor:
        """The mean row, read a block of rows at a time (never the whole table)."""
        step = max(1, BLOCK_ELEMENTS // max(1, math.prod(_sizes(inner))))
        total = torch.zeros(_sizes(inner), dtype=torch.float64)
        for start in range(0, self.source_rows, step):
            rows = slice(start, min(start + step, self.source_rows))
            total += self.source.read((rows, *inner)).sum(dim=0, dtype=torch.float64)
        return (total / self.source_rows).float()


@dataclass(frozen=True)
class Initial:
    """Values drawn from N(mean, std), or the constant `mean` when std is 0.

    The draw is cut into blocks of whole rows (along dimension 0), each from a generator seeded
    by (seed, name, block): a piece of the parameter reads the same values whatever the split
    and draws only the blocks it overlaps."""

    shape: tuple[int, ...]
    mean: float
    std: float
    seed: int
    name: str

    def read(self, region: Region) -> Tensor:
        if not self.std:
            return torch.full(_sizes(region), self.mean)
        rows = max(1, BLOCK_ELEMENTS // max(1, math.prod(self.shape[1:])))
        first, rest = region[0], region[1:]
        pieces = []
        for block in range(first.start // rows, (first.stop - 1) // rows + 1):
            start = block * rows
            values = torch.empty(min(rows, self.shape[0] - start), *self.shape[1:])
            values.normal_(self.mean, self.std, generator=self._generator(block))
            wanted = slice(max(first.start, start) - start, min(first.stop, start + rows) - start)
            pieces.append(values[(wanted, *rest)])
        return torch.cat(pieces)

    def _generator(self, block: int) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}/{self.name}/{block}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def filled_weights(model: ZenCoder) -> Iterator[tuple[str, Tensor]]:
    """What a start fills: every parameter (a tied one once) and every persistent buffer."""
    yield from model.named_parameters()
    buffers = dict(model.named_buffers())
    for name in model.state_dict(keep_vars=True):
        if name in buffers:
            yield name, buffers[name]


def initial_sources(model: ZenCoder, seed: int) -> dict[str, Source]:
    """The initial distribution of every weight of `model`; persistent buffers (the expert
    bias) start at zero, as a new model builds them."""
    sources: dict[str, Source] = {}
    parameters = dict(model.named_parameters())
    for name, tensor in filled_weights(model):
        mean, std = (
            _initial_distribution(model, name, tensor.dim()) if name in parameters else (0, 0)
        )
        sources[name] = Initial(tuple(tensor.shape), mean, std, seed, name)
    return sources


def _initial_distribution(model: ZenCoder, name: str, dim: int) -> tuple[float, float]:
    """The model's rule, or the owning module's where it has its own (a LoRA adapter, added to
    the model from outside, says how its factors start)."""
    owner_name, _, attribute = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if hasattr(owner, "initial_distribution"):
        return owner.initial_distribution(attribute)
    return model.initial_distribution(name, dim)


def grow_vocabulary(
    config: ModelConfig, sources: dict[str, Source], vocab_size: int | None
) -> tuple[ModelConfig, dict[str, Source]]:
    """The model with at least `vocab_size` token rows (the data's tokenizer: the base's plus the
    markers added after it): each new row of the embedding and the output head starts at the
    mean of the base's rows, a tied pair once. A base with more rows (a vocabulary padded past
    its tokenizer) keeps them all."""
    rows = config.vocab_size
    if vocab_size is None or vocab_size <= rows:
        return config, sources
    grown = dict(sources)
    mapping = (*range(rows), *[None] * (vocab_size - rows))
    for name in VOCABULARY_ROWS[:1] if config.tie_embeddings else VOCABULARY_ROWS:
        grown[name] = Rows(sources[name], mapping, rows, "mean")
    return dataclasses.replace(config, vocab_size=vocab_size), grown


def _local_piece(tensor: Tensor) -> tuple[Region, Tensor]:
    """Which part of the whole tensor this process holds, and the tensor that holds it."""
    if isinstance(tensor, DTensor):
        # The placement arithmetic torch.distributed.checkpoint itself uses to save shards.
        shape, offset = compute_local_shape_and_global_offset(
            tensor.shape, tensor.device_mesh, tensor.placements
        )
        pieces = zip(offset, shape, strict=True)
        return tuple(slice(start, start + size) for start, size in pieces), tensor.to_local()
    return _whole(tensor.shape), tensor


@torch.no_grad()
def fill(model: ZenCoder, sources: Mapping[str, Source]) -> None:
    """Copy into every weight's local piece what its source says, one piece at a time."""
    for name, tensor in filled_weights(model):
        region, local = _local_piece(tensor)
        if local.numel():
            local.copy_(sources[name].read(region))


def build(
    config: ModelConfig,
    sources: Mapping[str, Source],
    *,
    seed: int,
    device: torch.device | str = "cpu",
    prepare: Callable[[ZenCoder], ZenCoder] | None = None,
    materialize: Callable[[ZenCoder], None] | None = None,
) -> ZenCoder:
    """The model of `config`: built on the meta device, turned into the model to start by
    `prepare` (adapters, parallelism: parameters may become DTensors), given memory by
    `materialize` (by default every tensor on `device`, the non-persistent buffers computed) and
    filled from `sources`; a weight without a source is drawn from its initial distribution
    with `seed`."""
    with torch.device("meta"):
        model = ZenCoder(config)
    if prepare is not None:
        model = prepare(model)
    sources = {**initial_sources(model, seed), **sources}
    if materialize is None:
        model.to_empty(device=device)
        model.init_non_persistent_buffers()
    else:
        materialize(model)
    if config.tie_embeddings and model.head.weight is not model.embed.weight:
        model.head.weight = model.embed.weight  # to_empty replaced each, untying the pair
    fill(model, sources)
    return model
