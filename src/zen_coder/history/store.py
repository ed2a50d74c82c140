"""The on-disk dataset of `zen-coder mine`: record schema, shards, ledgers and crash safety.

Layout of an output directory (docs/mining.md describes the record schema):

    manifest.json                        inputs, config, schema version, counts
    data/<repo>/<shard>.parquet          the records (zstd Parquet)
    _state/lock                          held while a run writes
    _state/run                           a Ray run's id: tasks check they see the driver's folder
    _state/staging/<repo>/<shard>.*      extracted shards waiting for deduplication
    _state/keys/<repo>/<shard>.parquet   dedup keys of every final record (kept or dropped)
    _state/ledgers/<repo>/<shard>.json   what a final shard covers: commits and counts

Every file is written to a temporary name and renamed into place; a shard's ledger is written last
and is its commit marker. On start, temporary files and shards without a ledger are removed, so a
run killed at any moment leaves no partial shard and resumes without duplicates.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zen_coder.errors import ZenCoderError
from zen_coder.files import TEMPORARY_GLOB, write_atomic, write_json_atomic

SCHEMA_VERSION = 1

# The record schema, as its Arrow types print (`str(type)`): the manifest states it, and
# zen_coder.history.shards builds the Arrow schema from it. Spelled out here so that a run that
# writes no shard (a rerun with nothing new) never imports pyarrow, 0.1 s of its time.
RECORD_FIELDS: tuple[tuple[str, str, bool], ...] = (  # (name, type, nullable)
    ("repo", "string", False),
    ("commit", "string", False),
    ("parent", "string", True),
    ("author_time", "timestamp[ms, tz=UTC]", False),
    ("committer_time", "timestamp[ms, tz=UTC]", False),
    ("message", "string", False),
    ("author", "string", False),
    ("path", "string", False),
    ("old_path", "string", True),
    ("change_type", "string", False),
    ("language", "string", True),
    ("old_content", "string", True),
    ("new_content", "string", True),
    ("diff", "string", False),
    ("lines_added", "int32", False),
    ("lines_deleted", "int32", False),
    ("history_position", "int32", False),
)


@dataclass(frozen=True)
class ShardPaths:
    data: Path
    keys: Path
    ledger: Path


class DatasetDir:
    """One output directory: where shards live and how a run claims, recovers and finalizes them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.state = root / "_state"
        self.staging = self.state / "staging"
        self.keys = self.state / "keys"
        self.ledgers = self.state / "ledgers"
        self.manifest = root / "manifest.json"
        self._lock_handle = None

    def staged(self, repo_key: str, shard: str) -> ShardPaths:
        folder = self.staging / repo_key
        return ShardPaths(
            folder / f"{shard}.parquet", folder / f"{shard}.keys.parquet", folder / f"{shard}.json"
        )

    def final(self, repo_key: str, shard: str) -> ShardPaths:
        return ShardPaths(
            self.data / repo_key / f"{shard}.parquet",
            self.keys / repo_key / f"{shard}.parquet",
            self.ledgers / repo_key / f"{shard}.json",
        )

    def lock(self) -> None:
        """Claim the directory for this process; the lock dies with it, even on `kill -9`."""
        self.state.mkdir(parents=True, exist_ok=True)
        handle = open(self.state / "lock", "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ZenCoderError(
                f"{self.root}: another zen-coder run is writing here; wait for it or use --out"
            ) from None
        self._lock_handle = handle

    def release(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def recover(self) -> None:
        """Remove what an interrupted run left half-written.

        A ledger that does not parse (a machine crash can leave one empty) counts as absent, so its
        shard is removed and its commits are mined again.
        """
        for folder in (self.data, self.staging, self.keys, self.ledgers):
            if folder.exists():
                for leftover in folder.rglob(TEMPORARY_GLOB):
                    leftover.unlink()
        for folder in (self.staging, self.ledgers):
            for ledger in folder.glob("*/*.json"):
                try:
                    _read_json(ledger)
                except ValueError:
                    ledger.unlink()
        for repo_key, shard in self._shards(self.staging, ".parquet"):
            paths = self.staged(repo_key, shard)
            if self.final(repo_key, shard).ledger.exists() or not paths.ledger.exists():
                paths.data.unlink(missing_ok=True)
                paths.keys.unlink(missing_ok=True)
                paths.ledger.unlink(missing_ok=True)
        for repo_key, shard in self._shards(self.data, ".parquet"):
            paths = self.final(repo_key, shard)
            if not paths.ledger.exists():
                paths.data.unlink()
                paths.keys.unlink(missing_ok=True)

    @staticmethod
    def _shards(folder: Path, suffix: str) -> Iterator[tuple[str, str]]:
        if not folder.exists():
            return
        for path in sorted(folder.glob(f"*/*{suffix}")):
            if not path.name.endswith(".keys.parquet"):
                yield path.parent.name, path.name.removesuffix(suffix)

    def has_staged(self) -> bool:
        return any(self.staging.glob("*/*.json"))

    def staged_ledgers(self) -> list[dict]:
        return [_read_json(p) for p in sorted(self.staging.glob("*/*.json"))]

    def final_ledgers(self) -> list[dict]:
        return [_read_json(p) for p in sorted(self.ledgers.glob("*/*.json"))]

    def mined_commits(self, repo_key: str) -> set[str]:
        """Every commit of the repository that a staged or final shard already covers."""
        done: set[str] = set()
        for folder in (self.staging / repo_key, self.ledgers / repo_key):
            for path in folder.glob("*.json"):
                done.update(_read_json(path)["commits"])
        return done

    def promote(self, ledger: dict, *, rewritten: bool = False) -> None:
        """Make a staged shard final: its records and keys move to data/ and keys/ (unless dedup
        has `rewritten` them there without its duplicates), then its final ledger is written."""
        staged = self.staged(ledger["repo_key"], ledger["shard"])
        final = self.final(ledger["repo_key"], ledger["shard"])
        if not rewritten and ledger["records"]:
            _link_or_copy(staged.data, final.data)
            _link_or_copy(staged.keys, final.keys)
        size = final.data.stat().st_size if final.data.exists() else 0
        write_json_atomic(final.ledger, {**ledger, "data_bytes": size})
        for path in (staged.data, staged.keys, staged.ledger):
            path.unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (instant, and the staged copy stays valid until the ledger is written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        write_atomic(target, lambda temporary: shutil.copyfile(source, temporary))


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
