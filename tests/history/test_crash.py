"""A mining run killed at any moment resumes with no duplicate and no corrupt shard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.history.test_runs import content_totals, sorted_records
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.history.store import DatasetDir

ROOT = Path(__file__).resolve().parents[2]
SALT = "crash-test-salt"
BATCH = "commits_per_batch=40"


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "repo"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "synthetic_repo.py"),
            str(path),
            "--commits",
            "2500",
        ],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def reference(history, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    mine([RepoSpec(str(history))], out, workers=2, salt=SALT.encode())
    return out


def start_mining(history: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "zen_coder.cli", "mine", str(history), "--out", str(out)]
    command += ["--quiet", "--workers", "2", "--set", BATCH]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "ZEN_CODER_SALT": SALT},
        text=True,
    )


def wait_for_staged_shards(out: Path, process: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / "_state" / "staging").glob("*/*.json"))) >= count:
            return
        time.sleep(0.01)
    pytest.fail("the run never staged a shard")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_consistent(out: Path) -> None:
    """No temporary file, every data shard complete and covered by a ledger, nothing staged."""
    assert not list(out.rglob(".*.tmp-*"))
    store = DatasetDir(out)
    for shard in (out / "data").glob("*/*.parquet"):
        assert store.final(shard.parent.name, shard.stem).ledger.exists()
        pq.read_table(shard)
    assert not list((out / "_state" / "staging").glob("*/*"))


def test_kill_9_then_resume_gives_the_uninterrupted_dataset(history, reference, tmp_path):
    out = tmp_path / "out"
    process = start_mining(history, out)
    wait_for_staged_shards(out, process, 2)
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "worker processes outlived their parent"

    resumed = start_mining(history, out)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert_consistent(out)
    assert sorted_records(out) == sorted_records(reference)
    assert content_totals(out) == content_totals(reference)


def test_kills_at_any_moment_converge_to_the_uninterrupted_dataset(history, reference, tmp_path):
    out = tmp_path / "out"
    delay = 0.3
    for _ in range(12):
        process = start_mining(history, out)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            delay *= 1.6
            continue
        assert process.returncode == 0, process.stderr.read()
        break
    else:
        pytest.fail("the run never finished")
    assert_consistent(out)
    assert sorted_records(out) == sorted_records(reference)
    assert content_totals(out) == content_totals(reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["commits_seen"] == 2500


def test_ctrl_c_stops_at_once_with_one_line_and_resumes(history, reference, tmp_path):
    out = tmp_path / "out"
    process = start_mining(history, out)
    wait_for_staged_shards(out, process, 1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.strip() == "zen-coder: interrupted; rerun the same command to resume"
    resumed = start_mining(history, out)
    resumed.communicate(timeout=300)
    assert resumed.returncode == 0
    assert sorted_records(out) == sorted_records(reference)


def test_a_truncated_ledger_and_leftovers_are_recovered(tmp_path):
    from tests.history.test_runs import small_repo

    repo = small_repo(tmp_path / "repo", files=6)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    config = MineConfig(commits_per_batch=2)
    mine([RepoSpec(str(repo.path))], out, config, workers=1, salt=SALT.encode())
    mine([RepoSpec(str(repo.path))], fresh, config, workers=1, salt=SALT.encode())
    ledgers = sorted((out / "_state" / "ledgers").rglob("*.json"))
    ledgers[1].write_text("")  # what a machine crash can leave behind
    (out / "data" / "repo" / ".half-written.parquet.tmp-123").write_bytes(b"PAR1")
    report = mine([RepoSpec(str(repo.path))], out, config, workers=1, salt=SALT.encode())
    assert report.new_commits == 2
    assert_consistent(out)
    assert sorted_records(out) == sorted_records(fresh)
    assert content_totals(out) == content_totals(fresh)
