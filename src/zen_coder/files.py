"""Reading the user's files, with errors that name the file and the fix."""

from __future__ import annotations

import os
import tomllib
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


def user_cache_dir() -> Path:
    """zen-coder's cache folder: $XDG_CACHE_HOME/zen-coder, by default ~/.cache/zen-coder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zen-coder"
