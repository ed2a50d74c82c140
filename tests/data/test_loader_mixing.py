"""Batches that mix repositories (`repos_per_batch`), on data packed by `pack.SplitWriter`."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.data.test_loader import assert_same, take
from zen_coder.data.loader import (
    PackedDataset,
    PackedLoader,
    mixed_order,
    open_split,
    sequence_repositories,
)
from zen_coder.data.pack import Document, SplitWriter, channel_dtypes

L = 16


def pack(root: Path, documents: list[Document], shuffle_buffer: int = 0) -> Path:
    """Write `documents` as `zen-coder prepare` writes a training split; the data's root."""
    writer = SplitWriter(
        root / "train",
        L,
        channel_dtypes(1000, 10, L),
        pad_id=0,
        seed=1,
        shuffle_buffer=shuffle_buffer,
    )
    for document in documents:
        writer.add(document)
    writer.close()
    return root


def whole_sequences(repositories: list[int]) -> list[Document]:
    """One document of L tokens per repository id given: with no shuffle buffer, sequence i is
    document i, of repository `repositories[i]`, and its tokens are all i."""
    return [
        Document(np.full(L, i), np.zeros(L, dtype=np.int64), repo=repo, language=1)
        for i, repo in enumerate(repositories)
    ]


def sizes_of(counts: dict[int, int]) -> list[int]:
    """Repository ids, `counts[id]` sequences of each, interleaved by a fixed shuffle."""
    labels = [repo for repo, count in counts.items() for _ in range(count)]
    return np.random.default_rng(5).permutation(labels).tolist()


def rows_of(batch: dict) -> np.ndarray:
    return batch["tokens"][:, 0].numpy()


def repositories_per_batch(
    order: np.ndarray, labels: np.ndarray, batch_size: int
) -> list[tuple[int, int]]:
    """For each consecutive batch of `order`: (repositories in it, repositories left before)."""
    seen: list[tuple[int, int]] = []
    for start in range(0, len(order), batch_size):
        left = len(np.unique(labels[order[start:]]))
        seen.append((len(np.unique(labels[order[start : start + batch_size]])), left))
    return seen


def test_each_sequence_belongs_to_the_repository_of_most_of_its_tokens(tmp_path):
    """Documents of random lengths, shuffled and packed across sequences, some of no repository
    (0): checked against a count per sequence. (Broken by hand, counting repository 0 or the
    padding as a repository makes sequences of mostly unknown documents fail.)"""
    rng = np.random.default_rng(0)
    documents = [
        Document(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64), int(rng.choice(4)), 1)
        for n in rng.integers(1, 3 * L, size=300)
    ]
    arrays = open_split(pack(tmp_path, documents, shuffle_buffer=64), "train")
    expected = []
    for repo, segment in zip(arrays["repo"], arrays["segment"], strict=True):
        counts = Counter(int(r) for r, s in zip(repo, segment, strict=True) if r and s)
        best = max(counts.values(), default=0)
        expected.append(min((r for r, c in counts.items() if c == best), default=0))
    assert Counter(expected)[0] > 0 and len(set(expected)) == 4  # the data has each case
    np.testing.assert_array_equal(sequence_repositories(arrays), expected)


@pytest.mark.parametrize(("k", "batch_size"), [(2, 4), (3, 6), (2, 6)])
def test_each_batch_holds_k_repositories_of_those_left(tmp_path, k, batch_size):
    """Every sequence once per epoch, each batch from min(k, repositories left) repositories.
    Each repository has a multiple of batch_size / k sequences, so no drawn one runs short and
    the count is exact. (Broken by hand, drawing k with replacement makes a batch of one
    repository; a plain permutation fails at once.)"""
    labels = sizes_of({1: 36, 2: 24, 3: 18, 4: 6, 5: 12})
    dataset = PackedDataset(
        pack(tmp_path, whole_sequences(labels)),
        "train",
        batch_size=batch_size,
        repos_per_batch=k,
    )
    labels = np.array(labels)
    for epoch in range(3):
        order = dataset.order(epoch)
        assert sorted(order) == list(range(len(labels)))
        counts = repositories_per_batch(order, labels, batch_size)
        assert all(held == min(k, left) for held, left in counts), counts
        assert counts[0] == (k, 5)
    assert not np.array_equal(dataset.order(0), dataset.order(1))


def test_short_repositories_still_mix_every_batch(tmp_path):
    """Repositories of every size, sequences of several repositories (the packer's shuffle
    buffer), two ranks: each batch holds at least min(k, repositories left) of them, and all but
    a few exactly k, since none holds more than 1/k of the sequences (one that did would outlast
    the others). (Broken by hand, drawing the repositories with replacement fails, and so does
    an order drawn from an unseeded generator, which differs between ranks.)"""
    rng = np.random.default_rng(1)
    documents = [
        Document(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64), repo, 1)
        for repo, n in zip(
            rng.choice(6, size=400, p=[0.05, 0.3, 0.25, 0.2, 0.12, 0.08]),
            rng.integers(L // 2, 3 * L, size=400),
            strict=True,
        )
    ]
    root = pack(tmp_path, documents, shuffle_buffer=16)
    ranks = [
        PackedDataset(root, "train", batch_size=5, seed=2, rank=r, world_size=2, repos_per_batch=3)
        for r in range(2)
    ]
    labels = ranks[0].repositories
    order = ranks[0].order(0)
    assert sorted(order) == list(range(len(labels)))
    counts = repositories_per_batch(order, labels, 5)
    assert all(held >= min(3, left, 5) for held, left in counts), counts
    assert sum(held == 3 for held, _ in counts) > 0.95 * len(counts)
    np.testing.assert_array_equal(ranks[1].order(0), order)  # the same order on every rank


def test_the_order_is_pinned_and_a_function_of_seed_and_epoch(tmp_path):
    """Pinned, so a change in numpy's generator cannot silently change what a resumed run sees."""
    labels = np.repeat([1, 2, 3], [6, 4, 2])
    order = mixed_order(labels, 4, 2, np.random.default_rng([0, 0]))
    assert order.tolist() == [3, 2, 7, 9, 10, 11, 5, 4, 6, 8, 0, 1]
    root = pack(tmp_path, whole_sequences(sizes_of({1: 20, 2: 20})))
    first, again, other = (
        PackedDataset(root, "train", batch_size=4, seed=seed, repos_per_batch=2)
        for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(first.order(3), again.order(3))
    assert not np.array_equal(first.order(3), other.order(3))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers on a small CI box
@pytest.mark.parametrize("k", [0, 5, 13, 24, 31])
def test_resume_and_workers_give_the_same_remaining_batches(tmp_path, k):
    """A run stopped after k batches (across the epoch's end at 12) and resumed, with or without
    workers, sees the batches it would have seen. (Broken by hand, an order drawn from the
    global numpy generator instead of (seed, epoch) fails.)"""
    root = pack(tmp_path, whole_sequences(sizes_of({1: 20, 2: 16, 3: 12})))

    def loader(workers: int = 0) -> PackedLoader:
        dataset = PackedDataset(root, "train", batch_size=4, seed=3, repos_per_batch=2)
        return PackedLoader(dataset, num_workers=workers)

    reference = take(loader(), 40)
    labels = np.array(sizes_of({1: 20, 2: 16, 3: 12}))
    assert all(len(np.unique(labels[rows_of(b)])) == 2 for b in reference[:10])
    stopped = loader(workers=2)
    assert_same(take(stopped, k), reference[:k])
    resumed = loader(workers=1 if k % 2 else 0)
    resumed.load_state_dict(stopped.state_dict())
    assert_same(take(resumed, 40 - k), reference[k:])


def test_one_repository_is_the_plain_shuffle(tmp_path):
    """With one repository (and sequences of none), mixing changes nothing and keeps nothing."""
    root = pack(tmp_path, whole_sequences(sizes_of({1: 30, 0: 10})))
    dataset = PackedDataset(root, "train", batch_size=4, seed=4, repos_per_batch=2)
    assert dataset.repositories is None
    for epoch in range(2):
        np.testing.assert_array_equal(
            dataset.order(epoch), np.random.default_rng([4, epoch]).permutation(40)
        )


def test_mixing_sends_workers_one_id_per_sequence(tmp_path):
    """The repository of each sequence travels to the workers, not the data."""
    labels = sizes_of({1: 1000, 2: 1000})
    root = pack(tmp_path, whole_sequences(labels))  # 2000 x 16 tokens x 5 channels
    plain = PackedDataset(root, "train", batch_size=4)
    mixing = PackedDataset(root, "train", batch_size=4, repos_per_batch=2)
    assert mixing.repositories.tolist() == labels
    assert len(pickle.dumps(mixing)) - len(pickle.dumps(plain)) < 2000 * 2 + 200
