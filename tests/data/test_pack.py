"""Packing documents into fixed-length sequences keeps every token, in order, with its channels."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_coder.data.pack import CHANNELS, Document, SplitWriter, channel_dtypes

PAD = 1


def read_split(folder):
    index = json.loads((folder / "index.json").read_text())
    shape = (index["sequences"], index["context_length"])
    return {
        name: np.fromfile(folder / f"{name}.bin", dtype=index["channels"][name]).reshape(shape)
        for name in CHANNELS
    }


def pieces_of(arrays):
    """Every (sequence, segment) piece of the packed data, in order."""
    for row in range(arrays["tokens"].shape[0]):
        segments = arrays["segment"][row]
        for number in range(1, int(segments.max()) + 1):
            mask = segments == number
            yield {name: arrays[name][row][mask] for name in CHANNELS}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.sampled_from([8, 16, 64]))
def test_every_token_survives_packing(tmp_path_factory, lengths, context_length):
    folder = tmp_path_factory.mktemp("split")
    dtypes = channel_dtypes(5000, 10, context_length)
    writer = SplitWriter(folder, context_length, dtypes, pad_id=PAD, seed=3, shuffle_buffer=4)
    documents = []
    for number, length in enumerate(lengths):
        tokens = np.arange(1000 * number + 2, 1000 * number + 2 + length)
        document = Document(tokens, np.arange(length) + number, repo=number % 7 + 1, language=3)
        documents.append(document)
        writer.add(document)
    sequences = writer.close()
    arrays = read_split(folder)
    assert sequences == arrays["tokens"].shape[0] == -(-sum(lengths) // context_length)
    # Reassemble documents from their pieces: their first token says which document they are.
    rebuilt: dict[int, list] = {}
    for piece in pieces_of(arrays):
        number = int(piece["tokens"][0]) // 1000
        rebuilt.setdefault(number, []).append(piece)
        assert (piece["repo"] == number % 7 + 1).all() and (piece["language"] == 3).all()
    assert sorted(rebuilt) == list(range(len(lengths)))
    for number, document in enumerate(documents):
        tokens = np.concatenate([piece["tokens"] for piece in rebuilt[number]])
        times = np.concatenate([piece["time"] for piece in rebuilt[number]])
        assert tokens.tolist() == document.tokens.tolist()
        assert times.tolist() == document.time.tolist()
    # Only the last sequence is padded, with segment 0 and the pad token.
    padding = arrays["segment"] == 0
    assert (arrays["tokens"][padding] == PAD).all()
    assert not padding[:-1].any()


def test_dtypes_widen_only_when_needed():
    small = channel_dtypes(4096, 3, 512)
    assert small == {
        "tokens": "uint16",
        "repo": "uint16",
        "language": "uint8",
        "time": "uint16",
        "segment": "uint16",
    }
    big = channel_dtypes(128_000, 70_000, 131_072)
    assert (big["tokens"], big["repo"], big["segment"]) == ("uint32", "uint32", "uint32")


def test_temporal_positions_saturate(tmp_path):
    writer = SplitWriter(tmp_path, 4, channel_dtypes(600, 2, 4), pad_id=PAD, seed=0)
    writer.add(Document(np.array([5, 6]), np.array([70_000, 3]), repo=1, language=1))
    writer.close()
    assert read_split(tmp_path)["time"][0].tolist() == [65_535, 3, 0, 0]
