"""Reading what `zen-coder mine` wrote: the manifest, then one repository's records at a time.

A repository's metadata, messages and diffs are read whole (file histories need them in commit
order); file contents are read shard by shard, when a sample needs them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_json
from zen_coder.history.store import SCHEMA_VERSION

MINE_FIX = "mine it again into a fresh --out directory with `zen-coder mine`"
METADATA = [
    "repo",
    "commit",
    "committer_time",
    "message",
    "path",
    "old_path",
    "change_type",
    "language",
    "diff",
    "history_position",
]


@dataclass(frozen=True)
class MinedDataset:
    root: Path
    manifest: dict
    shards: dict[str, list[Path]]  # repository name -> its shards, in commit order

    @property
    def fingerprint(self) -> str:
        """Identifies the mined data: a changed dataset must be prepared again."""
        summary = json.dumps([self.manifest["totals"], self.manifest["shards"]], sort_keys=True)
        return hashlib.blake2b(summary.encode(), digest_size=16).hexdigest()


def open_mined(root: Path) -> MinedDataset:
    """Check a mined dataset directory and list its shards per repository."""
    manifest_path = root / "manifest.json"
    missing = f"{root} is not a mined dataset; run `zen-coder mine` first"
    manifest = read_json(manifest_path, missing, MINE_FIX)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ZenCoderError(
            f"{manifest_path} has schema version {version!r}; this zen-coder reads version "
            f"{SCHEMA_VERSION}: {MINE_FIX}"
        )
    shards: dict[str, list[Path]] = {}
    for relative in manifest.get("shards", []):
        path = root / relative
        if not path.exists():
            raise ZenCoderError(f"shard {path} listed in {manifest_path} is missing; {MINE_FIX}")
        shards.setdefault(path.parent.name, []).append(path)
    if not shards:
        raise ZenCoderError(f"{root} holds no records; mine repositories with commits first")
    return MinedDataset(root, manifest, {key: sorted(paths) for key, paths in shards.items()})


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ZenCoderError(f"shard {path} is corrupt ({exc}); {MINE_FIX}") from None


def repository_metadata(shards: list[Path]) -> pa.Table:
    """Every record of one repository without its file contents, in commit order."""
    return pa.concat_tables([read_shard(path, METADATA) for path in shards])


def shard_contents(shards: list[Path]) -> Iterator[pa.Table]:
    """Each shard's file contents, in the same row order as `repository_metadata`."""
    for path in shards:
        yield read_shard(path, ["old_content", "new_content"])
