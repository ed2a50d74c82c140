"""The Parquet side of the dataset: the record and dedup-key schemas, and how shards are written.

Apart from zen_coder.history.store (the directory, its ledgers and crash safety) because pyarrow
takes 0.1 s to import, and a run that writes no shard never needs it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zen_coder.files import write_atomic
from zen_coder.history.store import RECORD_FIELDS, SCHEMA_VERSION

_TYPES = {
    "string": pa.string(),
    "timestamp[ms, tz=UTC]": pa.timestamp("ms", tz="UTC"),
    "int32": pa.int32(),
}

RECORD_SCHEMA = pa.schema(
    [pa.field(name, _TYPES[kind], nullable=nullable) for name, kind, nullable in RECORD_FIELDS],
    metadata={"zen_coder.schema_version": str(SCHEMA_VERSION)},
)

KEYS_SCHEMA = pa.schema(
    [
        pa.field("content_hash", pa.uint64(), nullable=False),
        pa.field("bands", pa.binary(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
    ]
)

# Columns that repeat within a shard (dictionary-encoded), and the file contents and diffs, for
# which min/max statistics would cost time and say nothing.
_DICTIONARY_COLUMNS = ["repo", "change_type", "language", "author", "message", "commit", "parent"]
_TEXT_COLUMNS = {"message", "old_content", "new_content", "diff"}


def write_parquet_atomic(path: Path, table: pa.Table, *, records: bool) -> None:
    """Write a table as zstd Parquet, atomically."""
    write_atomic(path, lambda temporary: _write_parquet(table, temporary, records))


def _write_parquet(table: pa.Table, path: Path, records: bool) -> None:
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=3,  # measured: smaller and faster than level 1 on commit records
        use_dictionary=_DICTIONARY_COLUMNS if records else True,
        write_statistics=[n for n in table.column_names if n not in _TEXT_COLUMNS]
        if records
        else True,
        row_group_size=1024,
    )
