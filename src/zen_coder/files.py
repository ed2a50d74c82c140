"""Files of every stage: reading the user's, with errors that name the file and the fix, and
writing ours so that a crash at any moment leaves each one whole or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """The parsed TOML document at `path`; `kind` ("config file", "manifest") names it in errors."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZenCoderError(f"{kind} not found: {path}") from None
    except IsADirectoryError:
        raise ZenCoderError(f"{kind} {path} is a directory; pass a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ZenCoderError(f"{kind} {path} is not valid TOML: {exc}") from None


def read_json(path: Path, missing: str, fix: str) -> Any:
    """The parsed JSON document at `path`, which a stage wrote; a one-line error otherwise:
    "PATH not found: `missing`" when it is absent, "PATH is unreadable; `fix`" when it cannot be
    read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZenCoderError(f"{path} not found: {missing}") from None
    except (OSError, ValueError):
        raise ZenCoderError(f"{path} is unreadable; {fix}") from None


def user_cache_dir() -> Path:
    """zen-coder's cache folder: $XDG_CACHE_HOME/zen-coder, by default ~/.cache/zen-coder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zen-coder"


# What a write cut short leaves behind, beside its target: a hidden file or folder that a stage
# may remove when it recovers (the pid tells runs apart, so two never share one).
TEMPORARY_GLOB = ".*.tmp-*"


def temporary_path(path: Path) -> Path:
    """The hidden sibling that `path` is written as before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through `write(temporary)`, which writes a hidden sibling, then flush that
    to disk and rename it over `path`.

    A reader (or a run resumed after a crash) sees the old file or the new one, never a torn one:
    the rename is atomic, and the flush comes first so that a machine crash cannot leave the new
    name on blocks that were never written. A writer that fails leaves nothing behind. Callers
    give the writer rather than the bytes so that large files (model weights, Parquet shards) are
    written by their own library, without a second copy in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_json_atomic(
    path: Path, document: Any, *, indent: int = 1, sort_keys: bool = True
) -> None:
    """`document` as JSON with one trailing newline, written atomically."""
    text = json.dumps(document, indent=indent, sort_keys=sort_keys) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def install_directory(work: Path, target: Path) -> None:
    """Move the finished folder `work` to `target`, replacing what was there.

    A folder cannot be renamed over a non-empty one, so the old one is first renamed aside:
    `target` is then, at every moment, the old folder, absent, or the new one, never a mix.
    `work` must be on the same file system as `target` (build it beside `target`).
    """
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    work.rename(target)
    shutil.rmtree(old, ignore_errors=True)
