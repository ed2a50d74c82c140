"""The vectorized dedup decisions against their plain definitions, and lazy near-dup keys."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from tests.gitrepo import GitRepo
from tests.history.test_mine import SALT
from zen_coder.history.dedup import cross_repo_duplicates, exact_duplicates, fill_missing_bands
from zen_coder.history.minhash import MinHasher
from zen_coder.history.pipeline import mine
from zen_coder.history.shards import KEYS_SCHEMA
from zen_coder.history.sources import RepoSpec
from zen_coder.history.store import DatasetDir


@given(st.lists(st.integers(0, 6), max_size=60))
def test_exact_duplicates_are_repeats_of_earlier_hashes(values):
    hashes = np.array(values, dtype=np.uint64)
    expected = [value in values[:i] for i, value in enumerate(values)]
    assert exact_duplicates(hashes).tolist() == expected


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.integers(0, 4), min_size=3, max_size=3)),
        max_size=40,
    )
)
def test_near_duplicates_share_a_band_with_an_earlier_record_of_another_repo(rows):
    repos = np.array([repo for repo, _ in rows], dtype=np.int32)
    bands = np.array([band for _, band in rows], dtype=np.uint64).reshape(len(rows), 3)
    expected = [
        any(repos[j] != repos[i] and bool((bands[j] == bands[i]).any()) for j in range(i))
        for i in range(len(rows))
    ]
    assert cross_repo_duplicates(bands, repos).tolist() == expected


def test_missing_bands_are_computed_from_the_diffs(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("a.py", "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(20)))
    repo.commit("Add a")
    out = tmp_path / "out"
    mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    store = DatasetDir(out)
    data = next((out / "data").rglob("*.parquet"))
    paths = store.final(data.parent.name, data.stem)
    keys = pq.read_table(paths.keys)
    assert keys["bands"].to_pylist() == [b""]
    # A second row, dropped as a duplicate: it has no diff left in the data shard.
    dropped = pa.table({"content_hash": [7], "bands": [b""], "kept": [False]}, schema=KEYS_SCHEMA)
    pq.write_table(pa.concat_tables([keys, dropped]), paths.keys)

    hasher = MinHasher()
    fill_missing_bands(paths, hasher)
    filled = pq.read_table(paths.keys)["bands"].to_pylist()
    diff = pq.read_table(data)["diff"][0].as_py()
    from zen_coder.history.diff import changed_lines

    content_hash = keys["content_hash"][0].as_py()
    assert (
        filled[0] == hasher.band_hashes(changed_lines(diff), content_hash).astype("<u8").tobytes()
    )
    assert filled[1] == hasher.band_hashes("", 7).astype("<u8").tobytes()
