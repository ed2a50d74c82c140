"""Arrow tables from Python lists and NumPy arrays, and back, without pandas.

`pa.array`, `pa.table`, `pq.read_table` and `to_numpy` first ask whether their input or output is a
pandas object, and asking imports pandas: 0.2 s of every `zen-coder mine` run, as long as the
whole mining of a small repository, for a library mining never uses. These helpers build arrays
from their buffers instead (offsets and bytes for strings, packed bits for booleans and nulls) and
read them back the same way, with the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The most bytes one string or binary array can hold (its offsets are int32); beyond, a column
# becomes a chunked array, as pa.array makes it.
MAX_CHUNK_BYTES = 2**31 - 1


def table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from one list of Python values per field (None for null)."""
    return pa.Table.from_arrays(
        [column(columns[field.name], field.type) for field in schema], schema=schema
    )


def column(values: list, type: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """An array of `type` (string, binary, boolean, integer or timestamp) from Python values."""
    if pa.types.is_string(type):
        return _variable_width([None if v is None else v.encode() for v in values], type)
    if pa.types.is_binary(type):
        return _variable_width(values, type)
    if pa.types.is_boolean(type):
        return booleans(values)
    if pa.types.is_timestamp(type):
        return numbers(np.asarray(values, dtype=np.int64), type)
    if pa.types.is_integer(type):
        kind = "i" if pa.types.is_signed_integer(type) else "u"
        return numbers(np.asarray(values, dtype=f"{kind}{type.bit_width // 8}"), type)
    raise TypeError(f"no Arrow column of {type} from Python values")


def numbers(values: np.ndarray, type: pa.DataType) -> pa.Array:
    """A fixed-width array without nulls, sharing the memory of `values` (of the same width)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(type, len(values), [None, pa.py_buffer(values)])


def booleans(values: Sequence[bool]) -> pa.Array:
    bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def _variable_width(
    values: Sequence[bytes | None], type: pa.DataType
) -> pa.Array | pa.ChunkedArray:
    """A string or binary array of encoded values, chunked where it would outgrow its offsets."""
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    ends = np.cumsum(lengths)
    chunks = []
    start = 0
    while start < len(values) or not chunks:
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + MAX_CHUNK_BYTES, side="right")), start + 1)
        stop = min(stop, len(values))
        chunks.append(_one_chunk(values[start:stop], ends[start:stop] - base, type))
        start = stop
    return chunks[0] if len(chunks) == 1 else pa.chunked_array(chunks, type)


def _one_chunk(values: Sequence[bytes | None], ends: np.ndarray, type: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    offsets[1:] = ends
    present = np.fromiter((v is not None for v in values), bool, len(values))
    nulls = len(values) - int(present.sum())
    validity = pa.py_buffer(np.packbits(present, bitorder="little")) if nulls else None
    data = pa.py_buffer(b"".join(v for v in values if v is not None))
    return pa.Array.from_buffers(
        type, len(values), [validity, pa.py_buffer(offsets), data], null_count=nulls
    )


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file's table (pq.read_table looks for pandas metadata, importing pandas)."""
    return pq.ParquetFile(path).read(columns=columns)


def to_numpy(values: pa.ChunkedArray | pa.Array, dtype: type[np.generic]) -> np.ndarray:
    """A copy of a fixed-width column without nulls as a NumPy array of `dtype`."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [_chunk_values(chunk, dtype) for chunk in chunks if len(chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _chunk_values(chunk: pa.Array, dtype: type[np.generic]) -> np.ndarray:
    data = np.frombuffer(chunk.buffers()[1], dtype=dtype, count=chunk.offset + len(chunk))
    return data[chunk.offset :]
