"""Stream the packed training data of `zen-coder prepare` as resumable, deterministic batches.

A prepared split is a folder of raw little-endian channel files, each holding N packed sequences of
L items (see `open_split`). Training reads them through memory maps, so a batch costs the pages of
its B sequences whatever the size of the dataset.

Which sequences form a batch depends only on (seed, epoch, batch, rank, world size): epoch e visits
`np.random.default_rng([seed, e]).permutation(N)`, cut into global batches of B * world_size
sequences, one B-slice per rank. DataLoader workers and resuming change nothing about that order,
so a run can be stopped and continued, on another machine or with other workers, and see the same
data it would have seen uninterrupted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zen_coder.errors import ZenCoderError

CHANNELS = ("tokens", "repo", "language", "time", "segment")

# The dtype names index.json may use, as explicitly little-endian numpy dtypes.
DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}

REPREPARE = "run `zen-coder prepare` again"


def open_split(path: Path, split: str) -> dict[str, np.ndarray]:
    """Map the channels of one split as read-only arrays of shape (N, L), checking them first.

    The checks catch a truncated or half-written dataset here, with a message naming the file,
    instead of as garbage tokens or an index error deep inside training.
    """
    folder = Path(path) / split
    if not folder.is_dir():
        raise ZenCoderError(f"{folder}: split folder not found; {REPREPARE}")
    index_path = folder / "index.json"
    try:
        index = json.loads(index_path.read_text())
        sequences, length, channels = index["sequences"], index["context_length"], index["channels"]
    except FileNotFoundError:
        raise ZenCoderError(f"{index_path}: not found; {REPREPARE}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ZenCoderError(f"{index_path}: unreadable ({error!r}); {REPREPARE}") from None
    if not (
        isinstance(sequences, int)
        and sequences >= 0
        and isinstance(length, int)
        and length >= 1
        and isinstance(channels, dict)
        and sorted(channels) == sorted(CHANNELS)
    ):
        raise ZenCoderError(
            f"{index_path}: expected sequences >= 0, context_length >= 1 and the channels "
            f"{', '.join(CHANNELS)}; {REPREPARE}"
        )

    arrays = {}
    for name in CHANNELS:
        dtype = DTYPES.get(channels[name])
        if dtype is None:
            raise ZenCoderError(
                f"{index_path}: channel {name} has unknown dtype {channels[name]!r} "
                f"(expected one of {', '.join(DTYPES)}); {REPREPARE}"
            )
        file = folder / f"{name}.bin"
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise ZenCoderError(f"{file}: not found; {REPREPARE}") from None
        expected = sequences * length * dtype.itemsize
        if size != expected:
            raise ZenCoderError(
                f"{file}: {size} bytes, but index.json promises {sequences} x {length} "
                f"{channels[name]} = {expected} bytes; {REPREPARE}"
            )
        # mmap cannot map an empty file; an empty split is still a valid split.
        arrays[name] = (
            np.memmap(file, dtype=dtype, mode="r", shape=(sequences, length))
            if sequences
            else np.empty((0, length), dtype=dtype)
        )
    return arrays


class PackedDataset(IterableDataset):
    """One rank's batches of a split, from the current (epoch, batch) position to the epoch's end.

    Iterating does not move the position: iteration may run in DataLoader workers, whose copies of
    the dataset never report back, and workers prefetch batches the consumer has not seen yet.
    `PackedLoader` advances the position as the consumer receives batches.

    With `shuffle=False` (evaluation) the order is the file order and the epoch covers every
    sequence: the last batch may be smaller and a rank may get one batch fewer than the others.
    """

    def __init__(
        self,
        path: Path,
        split: str,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size {batch_size}, "
                f"rank {rank}, world_size {world_size}"
            )
        self.path, self.split = Path(path), split
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0

        # Opened here only to validate early and learn N; each iteration maps the files anew, so a
        # worker receives a path rather than a pickled copy of the data.
        self.sequences = sequences = len(open_split(self.path, split)["tokens"])
        if shuffle:
            # Only full global batches, so every rank takes the same number of steps.
            self.batches_per_epoch = sequences // (batch_size * world_size)
            if self.batches_per_epoch == 0:
                raise ZenCoderError(
                    f"{self.path / split}: {sequences} sequences, fewer than one global batch of "
                    f"{batch_size} x {world_size} ranks; use a smaller batch size or more data"
                )
        else:
            global_batches = -(-sequences // batch_size)
            self.batches_per_epoch = (global_batches - rank + world_size - 1) // world_size

    def order(self, epoch: int) -> np.ndarray:
        """Sequence indices in the order epoch `epoch` visits them, the same on every machine."""
        if not self.shuffle:
            return np.arange(self.sequences)
        return np.random.default_rng([self.seed, epoch]).permutation(self.sequences)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Torch's in-order DataLoader takes one batch from each worker in turn, starting at worker
        # 0, so worker w producing every num_workers-th batch from start + w keeps the order.
        worker = get_worker_info()
        offset, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        # Read the position now, not when the generator first runs: the consumer moves it.
        return self._batches(self.epoch, range(self.batch + offset, self.batches_per_epoch, step))

    def _batches(self, epoch: int, batches: range) -> Iterator[dict[str, torch.Tensor]]:
        arrays = open_split(self.path, self.split)
        order = self.order(epoch)
        for k in batches:
            start = (k * self.world_size + self.rank) * self.batch_size
            yield read_rows(arrays, order[start : start + self.batch_size])

    def state_dict(self) -> dict:
        """The next batch to produce: enough to resume exactly, given the same data and settings."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; one past the epoch means the settings changed."""
        if not 0 <= state["batch"] < max(self.batches_per_epoch, 1):
            raise ZenCoderError(
                f"saved data position batch {state['batch']} is past the {self.batches_per_epoch} "
                f"batches of an epoch; resume with the batch size and world size it was saved with"
            )
        self.epoch, self.batch = state["epoch"], state["batch"]


def read_rows(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Read `rows` of every channel, in that order, as int64 tensors [len(rows), L].

    Reading the rows in ascending order touches each page of the files once, front to back; the
    scatter puts them back into batch order. int64 because embeddings and `cross_entropy` index
    with it.
    """
    ascending = np.argsort(rows)
    batch = {}
    for name, array in arrays.items():
        out = np.empty((len(rows), array.shape[1]), dtype=np.int64)
        out[ascending] = array[rows[ascending]]
        batch[name] = torch.from_numpy(out)
    return batch


class PackedLoader:
    """Resumable batches: a DataLoader over a `PackedDataset` that counts what the consumer took.

    Counting here, in the consumer's process, is what makes `state_dict` exact: the workers run
    ahead by up to `prefetch_factor` batches each, and their positions never reach this process.
    """

    def __init__(self, dataset: PackedDataset, num_workers: int = 0) -> None:
        self.dataset, self.num_workers = dataset, num_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the batches from the dataset's position to the end of its epoch.

        The position advances as each batch is handed over; with the epoch's last batch it moves
        to batch 0 of the next epoch, so a state saved at any moment names a batch that exists.
        """
        dataset = self.dataset
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: a DataLoader iterator otherwise draws its worker seed from the
            # global one, and a resumed run would then see other random numbers (dropout).
            generator=torch.Generator().manual_seed(dataset.seed),
        )
        for batch in loader:
            dataset.batch += 1
            if dataset.batch == dataset.batches_per_epoch:
                dataset.epoch, dataset.batch = dataset.epoch + 1, 0
            yield batch

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
