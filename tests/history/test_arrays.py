"""Arrow arrays built from buffers: the same as pyarrow's own conversions, without pandas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gitrepo import GitRepo
from zen_coder.history import arrays
from zen_coder.history.shards import KEYS_SCHEMA, RECORD_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
_STRINGS = st.lists(st.none() | st.text(), max_size=20)


@settings(deadline=None)
@given(_STRINGS)
def test_strings_equal_pyarrows_conversion(values: list[str | None]) -> None:
    assert arrays.column(values, pa.string()).equals(pa.array(values, pa.string()))


@settings(deadline=None)
@given(st.lists(st.binary(), max_size=20))
def test_binaries_equal_pyarrows_conversion(values: list[bytes]) -> None:
    assert arrays.column(values, pa.binary()).equals(pa.array(values, pa.binary()))


@settings(deadline=None)
@given(st.lists(st.booleans(), max_size=40))
def test_booleans_equal_pyarrows_conversion(values: list[bool]) -> None:
    assert arrays.column(values, pa.bool_()).equals(pa.array(values, pa.bool_()))


@pytest.mark.parametrize(
    ("type", "values"),
    [
        (pa.uint64(), [0, 1, 2**64 - 1]),
        (pa.int32(), [-(2**31), 0, 2**31 - 1]),
        (pa.timestamp("ms", tz="UTC"), [0, 1_700_000_000_000]),
    ],
)
def test_numbers_equal_pyarrows_conversion(type: pa.DataType, values: list[int]) -> None:
    assert arrays.column(values, type).equals(pa.array(values, type))


@settings(deadline=None)
@given(_STRINGS)
def test_long_columns_are_chunked_like_pyarrows(values: list[str | None]) -> None:
    # The real limit is 2 GiB; a 10-byte one exercises the same cuts.
    limit = 10
    original, arrays.MAX_CHUNK_BYTES = arrays.MAX_CHUNK_BYTES, limit
    try:
        result = arrays.column(values, pa.string())
    finally:
        arrays.MAX_CHUNK_BYTES = original
    assert result.to_pylist() == values
    for chunk in result.chunks if isinstance(result, pa.ChunkedArray) else [result]:
        data = chunk.buffers()[2]
        assert len(chunk) == 1 or (data.size if data else 0) <= limit


def test_a_shard_is_written_byte_for_byte_as_from_pyarrows_table(tmp_path: Path) -> None:
    columns = {
        "repo": ["r", "r"],
        "commit": ["a" * 40, "b" * 40],
        "parent": [None, "a" * 40],
        "author_time": [1_700_000_000_000, 1_700_000_360_000],
        "committer_time": [1_700_000_000_000, 1_700_000_360_000],
        "message": ["Add x", "Fix y\n\nBecause ü."],
        "author": ["0" * 32, "1" * 32],
        "path": ["x.py", "y.py"],
        "old_path": [None, "y.py"],
        "change_type": ["add", "modify"],
        "language": ["Python", None],
        "old_content": [None, "y = 1\n"],
        "new_content": ["x = 1\n", "y = 2\n"],
        "diff": ["--- /dev/null\n", "--- a/y.py\n"],
        "lines_added": [1, 1],
        "lines_deleted": [0, 1],
        "history_position": [1, 2],
    }
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    pq.write_table(arrays.table(columns, RECORD_SCHEMA), ours)
    pq.write_table(pa.table(columns, schema=RECORD_SCHEMA), theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_fixed_width_columns_read_back_from_slices_and_chunks() -> None:
    chunked = pa.chunked_array([pa.array([1, 2, 3], pa.uint64()), pa.array([4], pa.uint64())])
    assert arrays.to_numpy(chunked.slice(1), np.uint64).tolist() == [2, 3, 4]
    assert arrays.to_numpy(pa.chunked_array([], pa.uint64()), np.uint64).tolist() == []


def test_keys_read_back(tmp_path: Path) -> None:
    keys = {"content_hash": [5, 2**63], "bands": [b"x", b"yz"], "kept": [True, False]}
    pq.write_table(arrays.table(keys, KEYS_SCHEMA), tmp_path / "keys.parquet")
    table = arrays.read_table(tmp_path / "keys.parquet", ["content_hash"])
    assert arrays.to_numpy(table["content_hash"], np.uint64).tolist() == [5, 2**63]


def test_mining_never_imports_pandas(tmp_path: Path) -> None:
    # pandas costs 0.2 s of every run; pyarrow imports it on its first `pa.array`. Checked by
    # hand: with extract's shard written through `pa.table`, pandas shows up here.
    repos = []
    for name in ("one", "two"):
        repo = GitRepo(tmp_path / name)
        repo.write("shared.py", "def shared():\n    return 1\n")  # the same record in both
        repo.commit("Add the shared helper")
        repo.write(f"{name}.py", f"NAME = {name!r}\n")
        repo.commit(f"Add {name}")
        repos.append(str(repo.path))
    command = [sys.executable, "-X", "importtime", "-m", "zen_coder.cli", "mine", *repos]
    env = {**os.environ, "ZEN_CODER_SALT": "test", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "out"), "--workers", "2", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()}
    assert "zen_coder.history.extract" in imported
    assert "pandas" not in imported
