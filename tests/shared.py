"""Where the shared data lives: the benchmark copies (HumanEval, MBPP, MultiPL-E) and the real
git repositories, read by the tests and never copied into the project.

It is found from this repository, so that any checkout sees it: the folder named by
`ZEN_CODER_SHARED` when that is set (one setting, for any other layout), otherwise the first
`shared/` folder holding `benchmarks/` beside the repository's root or beside a folder above it
(`../shared` from a checkout, `../../shared` from a worktree one level deeper).

Tests that read it carry the `shared_data` marker. Without the data they skip, saying which
setting finds it, or fail when `ZEN_CODER_REQUIRE_SHARED=1` (CI sets it): those tests are the only
coverage of MBPP, MultiPL-E, the language runners and decontamination against the real
benchmarks, and a CI run that silently skipped them would pass having checked none of that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTING = "ZEN_CODER_SHARED"
REQUIRE = "ZEN_CODER_REQUIRE_SHARED"
MARKER = "shared_data"


def find_shared(root: Path = ROOT, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The shared folder for the checkout at `root`, or None where there is none.

    The setting wins even when it names a folder without the data: a wrong setting must show,
    not fall back to whatever copy happens to sit near the checkout."""
    if setting := environ.get(SETTING):
        return Path(setting)
    for folder in (root, *root.parents):
        candidate = folder.parent / "shared"
        if (candidate / "benchmarks").is_dir():
            return candidate
    return None


SHARED = find_shared()
# Where there is no shared folder, a path that does not exist, so tests can still name its files.
BENCHMARKS = (SHARED or ROOT.parent / "shared") / "benchmarks"


def missing_reason(shared: Path | None = SHARED) -> str | None:
    """Why the shared benchmarks cannot be read, or None when they can."""
    if shared is not None and (shared / "benchmarks").is_dir():
        return None
    where = f"{SETTING}={shared}" if shared is not None else f"no shared/ folder above {ROOT}"
    return (
        f"shared benchmark data not found ({where}): set {SETTING} to the folder holding "
        "benchmarks/ and repos/"
    )


def require_shared(shared: Path | None = SHARED, environ: Mapping[str, str] = os.environ) -> None:
    """Skip the running test without the shared data, or fail it where CI demands the data."""
    reason = missing_reason(shared)
    if reason is None:
        return
    if environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1 demands it)", pytrace=False)
    pytest.skip(f"{reason}; {REQUIRE}=1 turns this skip into a failure")
