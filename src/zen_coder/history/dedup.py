"""Deduplication across the whole dataset, when staged shards become final.

Records are compared in a fixed order: every record already final comes first (it is never removed
again), then the staged shards by repository input order and commit order. A record is dropped as
  - an exact duplicate when an earlier record has the same content hash (old and new content of the
    change), in any repository;
  - a near duplicate when an earlier record of another repository shares a MinHash LSH band of its
    added and removed lines (The Stack's 256 permutations, 5-grams, 25 bands x 10 rows for Jaccard
    0.7). Like The Stack's clustering, similarity is transitive: a record similar to an earlier
    dropped one is dropped too, which keeps the result independent of where a run was interrupted.
Both are sorts over 8-byte keys (one band at a time), so memory grows with the number of records
(8 bytes per record per band), not with their size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from zen_coder.history import arrays
from zen_coder.history.config import MineConfig
from zen_coder.history.diff import changed_lines
from zen_coder.history.minhash import MinHasher
from zen_coder.history.shards import write_parquet_atomic
from zen_coder.history.store import DatasetDir, ShardPaths


@dataclass
class _Keys:
    hashes: np.ndarray  # uint64[n]
    bands: np.ndarray  # uint64[n, bands]
    repos: np.ndarray  # int32[n]


def _read_keys(paths: list, repo_ids: list[int], width: int) -> _Keys:
    hashes, bands, repos = [], [], []
    for path, repo_id in zip(paths, repo_ids, strict=True):
        table = arrays.read_table(path, ["content_hash", "bands"])
        hashes.append(arrays.to_numpy(table["content_hash"], np.uint64))
        blob = b"".join(table["bands"].to_pylist()) if width else b""
        bands.append(np.frombuffer(blob, dtype="<u8").reshape(len(table), width))
        repos.append(np.full(len(table), repo_id, dtype=np.int32))
    if not hashes:
        return _Keys(np.zeros(0, np.uint64), np.zeros((0, width), np.uint64), np.zeros(0, np.int32))
    return _Keys(np.concatenate(hashes), np.concatenate(bands), np.concatenate(repos))


def exact_duplicates(hashes: np.ndarray) -> np.ndarray:
    """True where an earlier position holds the same hash."""
    repeat = np.zeros(len(hashes), dtype=bool)
    if not len(hashes):
        return repeat
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    repeat[order] = np.r_[False, ordered[1:] == ordered[:-1]]
    return repeat


def cross_repo_duplicates(bands: np.ndarray, repos: np.ndarray) -> np.ndarray:
    """True where an earlier position of another repository shares any band hash."""
    count = len(repos)
    duplicate = np.zeros(count, dtype=bool)
    positions = np.arange(count)
    for column in range(bands.shape[1] if count else 0):
        values = bands[:, column]
        order = np.lexsort((positions, values))
        ordered_values, ordered_repos = values[order], repos[order]
        starts = np.r_[True, ordered_values[1:] != ordered_values[:-1]]
        group = np.cumsum(starts) - 1
        group_repo = ordered_repos[starts][group]
        # Within a group (sorted by position) every member from the first member that belongs to
        # another repository than the group's first on has an earlier cross-repository twin.
        differs = np.where(ordered_repos != group_repo, positions, count)
        first_other = np.minimum.reduceat(differs, np.flatnonzero(starts))[group]
        duplicate[order] |= positions >= first_other
    return duplicate


def fill_missing_bands(paths: ShardPaths, hasher: MinHasher) -> None:
    """Compute the near-duplicate keys a shard was written without.

    Workers skip them while a dataset holds one repository, where there is nothing to compare
    across. A record that dedup dropped has no diff left; it can only have been an exact
    duplicate of a record of the same (single) repository, which has the same keys, so a key
    that matches nothing else stands in for it without changing any outcome.
    """
    keys = arrays.read_table(paths.keys)
    bands = keys["bands"].to_pylist()
    if all(bands):
        return
    diffs = iter(arrays.read_table(paths.data, ["diff"])["diff"].to_pylist())
    filled = []
    rows = zip(keys["content_hash"].to_pylist(), bands, keys["kept"].to_pylist(), strict=True)
    for content_hash, band, kept in rows:
        if not band:
            text = changed_lines(next(diffs)) if kept else ""
            band = np.asarray(hasher.band_hashes(text, content_hash), dtype="<u8").tobytes()
        elif kept:
            next(diffs)
        filled.append(band)
    column = keys.schema.get_field_index("bands")
    write_parquet_atomic(
        paths.keys,
        keys.set_column(column, "bands", arrays.column(filled, pa.binary())),
        records=False,
    )


def promotions(root: str, repo_order: list[str], config: MineConfig) -> list[tuple]:
    """What finalizing the staged shards takes: one `promote_shard` job per shard, in order.

    The decisions need every key at once; carrying them out (rewriting a shard without its
    duplicates) is independent per shard, so the caller may run the jobs in parallel.
    """
    store = DatasetDir(Path(root))
    staged = store.staged_ledgers()
    if not staged:
        return []
    rank = {key: number for number, key in enumerate(repo_order)}
    staged.sort(key=lambda ledger: (rank.get(ledger["repo_key"], len(rank)), ledger["index"]))
    repo_ids: dict[str, int] = {}
    finals = [ledger for ledger in store.final_ledgers() if ledger["records"]]
    with_records = [ledger for ledger in staged if ledger["records"]]

    def key_paths(ledgers: list[dict], final: bool) -> tuple[list, list[int]]:
        locate = store.final if final else store.staged
        paths = [locate(ledger["repo_key"], ledger["shard"]).keys for ledger in ledgers]
        ids = [repo_ids.setdefault(ledger["repo_key"], len(repo_ids)) for ledger in ledgers]
        return paths, ids

    repositories = {ledger["repo_key"] for ledger in finals + with_records}
    near_needed = config.dedup_near and len(repositories) > 1
    width = 0
    if near_needed:
        hasher = MinHasher(
            config.minhash_permutations, config.shingle_size, config.near_dup_threshold
        )
        width = hasher.bands
        for ledger in finals:
            fill_missing_bands(store.final(ledger["repo_key"], ledger["shard"]), hasher)
        for ledger in with_records:
            fill_missing_bands(store.staged(ledger["repo_key"], ledger["shard"]), hasher)
    old = _read_keys(*key_paths(finals, final=True), width)
    new = _read_keys(*key_paths(with_records, final=False), width)
    first_new = len(old.hashes)
    exact = np.zeros(first_new + len(new.hashes), dtype=bool)
    near = np.zeros_like(exact)
    if config.dedup_exact:
        exact = exact_duplicates(np.concatenate([old.hashes, new.hashes]))
    if near_needed:
        near = cross_repo_duplicates(
            np.concatenate([old.bands, new.bands]), np.concatenate([old.repos, new.repos])
        )
    jobs = []
    offset = first_new
    for ledger in staged:
        count = ledger["records"]
        shard_exact = exact[offset : offset + count]
        shard_near = near[offset : offset + count] & ~shard_exact
        offset += count
        kept = ~(shard_exact | shard_near)
        exact_count, near_count = int(shard_exact.sum()), int(shard_near.sum())
        mask = None if kept.all() else kept.tolist()
        jobs.append((root, ledger, mask, exact_count, near_count))
    return jobs


def promote_shard(root: str, ledger: dict, kept: list[bool] | None, exact: int, near: int) -> None:
    """Move one staged shard into data/, without the rows `kept` marks False."""
    store = DatasetDir(Path(root))
    if kept is None:
        store.promote(ledger)
        return
    staged = store.staged(ledger["repo_key"], ledger["shard"])
    final = store.final(ledger["repo_key"], ledger["shard"])
    mask = arrays.booleans(kept)
    table = arrays.read_table(staged.data).filter(mask)
    if len(table):
        write_parquet_atomic(final.data, table, records=True)
    keys = arrays.read_table(staged.keys)
    keys = keys.set_column(keys.schema.get_field_index("kept"), "kept", mask)
    write_parquet_atomic(final.keys, keys, records=False)
    store.promote(_without_duplicates(ledger, table, exact, near), rewritten=True)


def _without_duplicates(ledger: dict, table: pa.Table, exact: int, near: int) -> dict:
    """The ledger of a shard once its duplicates are removed and `table` is what remains."""
    languages = Counter(
        "unknown" if language is None else language for language in table["language"].to_pylist()
    )
    files = Counter(ledger["file_reasons"]) + Counter(
        {"exact_duplicate": exact, "near_duplicate": near}
    )
    kept_commits = len(set(table["commit"].to_pylist()))
    commits = Counter(ledger["commit_reasons"]) + Counter(
        {"all_duplicates": ledger["commits_kept"] - kept_commits}
    )
    code_bytes = sum(len(text.encode()) for text in table["new_content"].to_pylist() if text)
    return {
        **ledger,
        "records": len(table),
        "commits_kept": kept_commits,
        "languages": dict(languages),
        "file_reasons": dict(files),
        "commit_reasons": dict(commits),
        "code_bytes": code_bytes,
    }
