"""The packed-data loader: validation, deterministic order, ranks, workers and exact resume."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from zen_coder.data.loader import PackedDataset, PackedLoader, open_split
from zen_coder.errors import ZenCoderError

CHANNEL_DTYPES = {
    "tokens": "uint16",
    "repo": "uint16",
    "language": "uint8",
    "time": "uint16",
    "segment": "uint16",
}
N, L, B = 100, 8, 4  # 25 batches per epoch on one rank


def write_split(
    root: Path, split: str, sequences: int, length: int, **dtypes: str
) -> dict[str, np.ndarray]:
    """Write a prepared split as `zen-coder prepare` does and return what each channel holds.

    Item (i, j) of the c-th channel is (i * length + j) * (c + 1), wrapped to the dtype, so the
    channels differ and the tokens of a batch tell which sequences it holds (see `rows_of`).
    """
    folder = root / split
    folder.mkdir(parents=True)
    dtypes = {**CHANNEL_DTYPES, **dtypes}
    position = np.arange(sequences * length).reshape(sequences, length)
    arrays = {}
    for c, (name, dtype) in enumerate(dtypes.items()):
        arrays[name] = (position * (c + 1)).astype(np.dtype(dtype).newbyteorder("<"))
        arrays[name].tofile(folder / f"{name}.bin")
    index = {"sequences": sequences, "context_length": length, "channels": dtypes}
    (folder / "index.json").write_text(json.dumps(index))
    return arrays


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_split(tmp_path, "train", N, L)


def rows_of(batch: dict) -> np.ndarray:
    return (batch["tokens"][:, 0] // L).numpy()


def take(loader: PackedLoader, n: int) -> list[dict]:
    """The next n batches of `loader`, across epochs, as a training loop would take them."""
    batches = []
    while len(batches) < n:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def assert_same(batches: list[dict], expected: list[dict]) -> None:
    assert len(batches) == len(expected)
    for batch, other in zip(batches, expected, strict=True):
        assert batch.keys() == other.keys()
        for name in batch:
            assert batch[name].equal(other[name])


def test_open_split_maps_read_only_channels(tmp_path):
    arrays = write_split(tmp_path, "validation", 5, L, tokens="uint32", repo="uint32")
    split = open_split(tmp_path, "validation")
    assert split.keys() == arrays.keys()
    for name, array in split.items():
        assert isinstance(array, np.memmap)
        assert not array.flags.writeable
        assert array.dtype == arrays[name].dtype
        np.testing.assert_array_equal(array, arrays[name])


def test_batches_hold_every_channel_of_their_sequences_as_int64(data):
    path, arrays = data
    (batch,) = take(PackedLoader(PackedDataset(path, "train", batch_size=B)), 1)
    rows = rows_of(batch)
    np.testing.assert_array_equal(rows, np.random.default_rng([0, 0]).permutation(N)[:B])
    assert batch.keys() == arrays.keys()
    for name, tensor in batch.items():
        assert tensor.dtype == torch.int64
        assert tensor.shape == (B, L)
        np.testing.assert_array_equal(tensor.numpy(), arrays[name][rows])


def test_each_epoch_visits_the_seeded_permutation(data):
    path, _ = data
    loader = PackedLoader(PackedDataset(path, "train", batch_size=B, seed=7))
    epochs = [np.concatenate([rows_of(b) for b in loader]) for _ in range(2)]
    for epoch, rows in enumerate(epochs):
        np.testing.assert_array_equal(rows, np.random.default_rng([7, epoch]).permutation(N))
    assert not np.array_equal(epochs[0], epochs[1])
    # Pinned, so a change in numpy's generator cannot silently change the data a resumed run sees.
    order = PackedDataset(path, "train", batch_size=B).order(0)
    assert order[:10].tolist() == [82, 36, 20, 5, 93, 16, 94, 52, 72, 90]


def test_ranks_take_disjoint_slices_of_every_full_global_batch(data):
    path, _ = data
    world_size = 3
    ranks = [
        PackedDataset(path, "train", batch_size=B, seed=1, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert [rank.batches_per_epoch for rank in ranks] == [N // (B * world_size)] * world_size
    permutation = np.random.default_rng([1, 0]).permutation(N)
    seen = []
    for r, dataset in enumerate(ranks):
        for k, batch in enumerate(PackedLoader(dataset)):
            start = (k * world_size + r) * B
            np.testing.assert_array_equal(rows_of(batch), permutation[start : start + B])
            seen.extend(rows_of(batch))
    assert len(seen) == len(set(seen)) == 96
    assert set(seen) == set(permutation[:96])


def test_evaluation_without_shuffle_covers_every_sequence_once(data):
    path, _ = data
    world_size, batch_size = 3, 8  # 13 global batches, the last one of 4 sequences
    ranks = [
        list(
            PackedLoader(
                PackedDataset(
                    path,
                    "train",
                    batch_size=batch_size,
                    rank=r,
                    world_size=world_size,
                    shuffle=False,
                )
            )
        )
        for r in range(world_size)
    ]
    assert [len(batches) for batches in ranks] == [5, 4, 4]
    assert len(ranks[0][-1]["tokens"]) == 4
    in_global_order = [ranks[g % world_size][g // world_size] for g in range(13)]
    np.testing.assert_array_equal(np.concatenate([rows_of(b) for b in in_global_order]), range(N))


@pytest.mark.parametrize("k", [0, 1, 12, 24, 25, 37])
def test_resume_continues_exactly_where_the_consumer_stopped(data, k):
    path, _ = data
    reference = take(PackedLoader(PackedDataset(path, "train", batch_size=B, seed=3)), 60)

    loader = PackedLoader(PackedDataset(path, "train", batch_size=B, seed=3))
    assert_same(take(loader, k), reference[:k])
    state = loader.state_dict()
    assert state == {"epoch": k // 25, "batch": k % 25}

    resumed = PackedLoader(PackedDataset(path, "train", batch_size=B, seed=3))
    resumed.load_state_dict(state)
    assert_same(take(resumed, 60 - k), reference[k:])
    assert_same(take(loader, 60 - k), reference[k:])  # the interrupted loader goes on too


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a small CI box
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_change_neither_order_nor_resume_position(data, workers):
    path, _ = data
    reference = take(PackedLoader(PackedDataset(path, "train", batch_size=B)), 30)

    loader = PackedLoader(PackedDataset(path, "train", batch_size=B), num_workers=workers)
    assert_same(take(loader, 5), reference[:5])
    # The workers have prefetched beyond batch 5; the state counts what the consumer received.
    assert loader.state_dict() == {"epoch": 0, "batch": 5}

    # Resume with another worker count, from a position that is not a multiple of it, and cross
    # the end of the epoch.
    resumed = PackedLoader(PackedDataset(path, "train", batch_size=B), num_workers=3 - workers)
    resumed.load_state_dict(loader.state_dict())
    assert_same(take(resumed, 25), reference[5:])


def test_a_dataset_reaches_workers_without_its_data(tmp_path):
    write_split(tmp_path, "train", 2000, L)  # 144 KB of channels
    dataset = PackedDataset(tmp_path, "train", batch_size=B)
    assert len(pickle.dumps(dataset)) < 2000


def test_a_split_too_small_for_a_batch(tmp_path):
    write_split(tmp_path, "train", 0, L)
    assert {name: a.shape for name, a in open_split(tmp_path, "train").items()} == dict.fromkeys(
        CHANNEL_DTYPES, (0, L)
    )
    assert list(PackedLoader(PackedDataset(tmp_path, "train", batch_size=B, shuffle=False))) == []
    with pytest.raises(ZenCoderError, match="fewer than one global batch"):
        PackedDataset(tmp_path, "train", batch_size=B)


def test_load_state_dict_rejects_a_position_past_the_epoch(data):
    path, _ = data
    dataset = PackedDataset(path, "train", batch_size=B)
    with pytest.raises(ZenCoderError, match="batch size and world size"):
        dataset.load_state_dict({"epoch": 0, "batch": 25})


def rewrite_index(folder: Path, **changes) -> None:
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**index, **changes}))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda f: shutil.rmtree(f), "train"),
        (lambda f: (f / "index.json").unlink(), "index.json"),
        (lambda f: (f / "index.json").write_text("{"), "index.json"),
        (lambda f: rewrite_index(f, channels={"tokens": "uint16"}), "index.json"),
        (lambda f: rewrite_index(f, channels={**CHANNEL_DTYPES, "time": "float32"}), "index.json"),
        (lambda f: (f / "time.bin").unlink(), "time.bin"),
        (lambda f: (f / "segment.bin").write_bytes(b"\0" * 17), "segment.bin"),
    ],
    ids=["split", "index", "json", "channels", "dtype", "file", "size"],
)
def test_a_damaged_split_is_one_line_naming_the_file(data, damage, named):
    path, _ = data
    damage(path / "train")
    with pytest.raises(ZenCoderError) as error:
        PackedDataset(path, "train", batch_size=B)
    message = str(error.value)
    assert "\n" not in message
    assert named in message
    assert message.endswith("run `zen-coder prepare` again")
