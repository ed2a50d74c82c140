"""Stream the packed training data of `zen-coder prepare` as resumable, deterministic batches.

A prepared split is a folder of raw little-endian channel files, each holding N packed sequences of
L items (see `open_split`). Training reads them through memory maps, so a batch costs the pages of
its B sequences whatever the size of the dataset.

Which sequences form a batch depends only on (seed, epoch, batch, rank, world size): epoch e visits
`np.random.default_rng([seed, e]).permutation(N)`, cut into global batches of B * world_size
sequences, one B-slice per rank. DataLoader workers and resuming change nothing about that order,
so a run can be stopped and continued, on another machine or with other workers, and see the same
data it would have seen uninterrupted.

With `repos_per_batch = k >= 2` and two or more repositories in the split, the epoch's order is
instead built batch by batch (`mixed_order`), so that each rank's batch of B sequences holds k
repositories: the contrastive loss compares a batch's documents across repositories and is 0
when they all share one. It is still a permutation drawn from `default_rng([seed, e])` alone,
so all of the above holds.
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

# Items of a channel read at once when a whole split is scanned (32 MB of int64).
SCAN_ITEMS = 1 << 22


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

    `repos_per_batch` (shuffled order only) mixes repositories in each rank's batch, see
    `mixed_order`; 0 or 1 is the plain shuffle, as is a split of one repository.
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
        repos_per_batch: int = 0,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size or repos_per_batch < 0:
            raise ValueError(
                f"need batch_size >= 1, 0 <= rank < world_size and repos_per_batch >= 0, got "
                f"batch_size {batch_size}, rank {rank}, world_size {world_size}, "
                f"repos_per_batch {repos_per_batch}"
            )
        self.path, self.split = Path(path), split
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.repos_per_batch = repos_per_batch
        self.epoch, self.batch = 0, 0

        # Opened here only to validate early and learn N; each iteration maps the files anew, so a
        # worker receives a path rather than a pickled copy of the data.
        arrays = open_split(self.path, split)
        self.sequences = sequences = len(arrays["tokens"])
        # Each sequence's repository, when batches mix them: one scan of two channels, here in
        # the consumer's process, so workers receive N ids instead of scanning each epoch.
        self.repositories: np.ndarray | None = None
        if shuffle and repos_per_batch >= 2:
            repositories = sequence_repositories(arrays)
            if np.count_nonzero(np.unique(repositories)) >= 2:
                self.repositories = repositories
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
        rng = np.random.default_rng([self.seed, epoch])
        if self.repositories is None:
            return rng.permutation(self.sequences)
        return mixed_order(self.repositories, self.batch_size, self.repos_per_batch, rng)

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


def sequence_repositories(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Each sequence's repository [N]: the most frequent nonzero id of its repo channel over its
    non-padding tokens (the smallest on a tie), 0 where it has none.

    A packed sequence may hold documents of several repositories (the packer's shuffle buffer
    mixes them); the sampler files it under the one that holds most of its tokens. Read in
    chunks of rows, so the scan's memory does not grow with the split.
    """
    repo, segment = arrays["repo"], arrays["segment"]
    sequences, length = repo.shape
    labels = np.zeros(sequences, dtype=repo.dtype)  # pickled to each worker: kept small
    rows = max(1, SCAN_ITEMS // length)
    for start in range(0, sequences, rows):
        ids = np.asarray(repo[start : start + rows], dtype=np.int64)
        counted = (ids > 0) & (np.asarray(segment[start : start + rows]) > 0)
        row = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[counted]
        width = int(ids.max(initial=0)) + 1
        keys, counts = np.unique(row * width + ids[counted], return_counts=True)
        key_rows, key_ids = keys // width, keys % width
        # Per row, the most frequent id first, the smallest among equals.
        best = np.lexsort((key_ids, -counts, key_rows))
        first = np.unique(key_rows[best], return_index=True)[1]
        labels[start + key_rows[best][first]] = key_ids[best][first]
    return labels


def mixed_order(
    repositories: np.ndarray, batch_size: int, repos_per_batch: int, rng: np.random.Generator
) -> np.ndarray:
    """A permutation of the sequences whose consecutive batches of `batch_size` each hold
    sequences of `repos_per_batch` repositories, so every rank's batch mixes them.

    Batch by batch: min(k, repositories left) repositories are drawn without replacement, in
    proportion to the sequences each has left (so they tend to run out together, and the last
    batches mix too), and the batch is split evenly among them, each taking its next
    sequences in a shuffled order. When the drawn ones have too few left, the batch is filled
    from the drawn ones' spare sequences, then from other repositories drawn the same way.
    Sequences without a repository (0) form a group of their own.

    A batch takes at most about 1/k of its sequences from one repository, so a repository that
    holds more than 1/k of the split outlasts the others, and the epoch ends with batches of it
    alone (fewer with a smaller k).
    """
    groups, group_of = np.unique(repositories, return_inverse=True)
    sizes = np.bincount(group_of, minlength=len(groups))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # The sequences grouped by repository, each group in a random order.
    pool = np.argsort(group_of, kind="stable")
    for start, size in zip(starts, sizes, strict=True):
        pool[start : start + size] = rng.permutation(pool[start : start + size])
    left = sizes.copy()
    order = np.empty(len(repositories), dtype=np.int64)
    filled = 0
    while filled < len(order):
        size = min(batch_size, len(order) - filled)
        live = np.flatnonzero(left)
        drawn = _draw(live, left, min(repos_per_batch, len(live), size), rng)
        shares = [size // len(drawn) + (i < size % len(drawn)) for i in range(len(drawn))]
        takes = [min(share, int(left[group])) for share, group in zip(shares, drawn, strict=True)]
        for index, group in enumerate(drawn):  # a short batch: the drawn ones' spare sequences
            takes[index] += min(size - sum(takes), int(left[group]) - takes[index])
        for group, take in zip(drawn, takes, strict=True):
            filled = _take(order, filled, pool[starts[group] :], left, sizes, group, take)
        while sum(takes) < size:  # still short: other repositories, drawn alike
            (group,) = _draw(np.flatnonzero(left), left, 1, rng)
            takes.append(min(size - sum(takes), int(left[group])))
            filled = _take(order, filled, pool[starts[group] :], left, sizes, group, takes[-1])
    return order


def _draw(
    candidates: np.ndarray, left: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` of the candidate groups, without replacement, in proportion to what each has
    left: the Gumbel top-k trick, which draws as one weighted draw after another would, at a
    fifth of the cost of `rng.choice` (the sampler draws once per batch)."""
    keys = np.log(left[candidates]) + rng.gumbel(size=len(candidates))
    return candidates[np.argsort(-keys, kind="stable")[:count]]


def _take(
    order: np.ndarray,
    filled: int,
    group_pool: np.ndarray,
    left: np.ndarray,
    sizes: np.ndarray,
    group: int,
    take: int,
) -> int:
    """Append the next `take` sequences of `group` (whose shuffled sequences start
    `group_pool`) to `order[:filled]`; return the new fill."""
    used = int(sizes[group] - left[group])
    order[filled : filled + take] = group_pool[used : used + take]
    left[group] -= take
    return filled + take


def spread_rows(sequences: int, wanted: int) -> np.ndarray:
    """`wanted` row numbers spread evenly over `sequences` rows, in order (all of them when
    there are no more)."""
    if wanted >= sequences:
        return np.arange(sequences)
    return np.linspace(0, sequences - 1, wanted).round().astype(np.int64)


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
