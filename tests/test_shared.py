"""Finding the shared data from the repository: the setting, the folders above, and CI's demand.

Each check was seen to fail once by hand: with the setting ignored, with only the checkout's own
parent searched (the nested worktree), and with the conftest hook removed (the marked test then
errors on the missing file instead of skipping).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared import REQUIRE, ROOT, SETTING, find_shared, missing_reason, require_shared


def shared_folder(parent: Path) -> Path:
    (parent / "shared" / "benchmarks").mkdir(parents=True)
    return parent / "shared"


def test_shared_beside_the_checkout_or_beside_a_folder_above_it(tmp_path):
    shared = shared_folder(tmp_path)
    assert find_shared(tmp_path / "repo", {}) == shared
    assert find_shared(tmp_path / "worktrees" / "repo", {}) == shared
    assert find_shared(tmp_path / "elsewhere" / "a" / "b" / "repo", {}) == shared


def test_a_shared_folder_without_benchmarks_is_passed_over(tmp_path):
    outer = shared_folder(tmp_path)
    (tmp_path / "worktrees" / "shared").mkdir(parents=True)
    assert find_shared(tmp_path / "worktrees" / "repo", {}) == outer


def test_the_setting_wins_even_where_it_names_nothing(tmp_path):
    shared_folder(tmp_path)
    assert find_shared(tmp_path / "repo", {SETTING: "/elsewhere"}) == Path("/elsewhere")
    reason = missing_reason(Path("/elsewhere"))
    assert reason is not None and f"{SETTING}=/elsewhere" in reason


def test_no_shared_folder_is_none_with_a_reason_naming_the_setting(tmp_path):
    assert find_shared(tmp_path / "repo", {}) is None
    assert SETTING in missing_reason(None)
    assert missing_reason(shared_folder(tmp_path)) is None


def test_missing_data_skips_or_fails_under_ci(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=f"{REQUIRE}=1") as skipped:
        require_shared(tmp_path, {})
    assert SETTING in str(skipped.value)
    with pytest.raises(pytest.fail.Exception, match=SETTING):
        require_shared(tmp_path, {REQUIRE: "1"})
    require_shared(shared_folder(tmp_path), {REQUIRE: "1"})


def run_marked_test(**settings: str) -> subprocess.CompletedProcess:
    """A real test that needs the data, run by pytest with this conftest and `settings`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **settings}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_benchmark_problems.py::test_shared_counts"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_marked_test_skips_without_the_data_and_fails_under_ci(tmp_path):
    nowhere = str(tmp_path / "nowhere")
    skipped = run_marked_test(**{SETTING: nowhere, REQUIRE: "0"})
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert f"{REQUIRE}=1" in skipped.stdout
    failed = run_marked_test(**{SETTING: nowhere, REQUIRE: "1"})
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout
    assert f"{SETTING}={nowhere}" in failed.stdout
