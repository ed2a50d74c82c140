"""Mining on a Ray cluster of two nodes, where a task cannot see the driver's files.

The cluster is two real `ray start` processes on this machine. The second runs in a private mount
namespace where the driver's folder (its clone cache, and anything else put there) is hidden under
an empty tmpfs, as it would be on another machine; the head offers no CPUs, so every mining task
runs on the second node.

Checked by hand with the previous behaviour (tasks read the clone in the driver's cache and wrote
wherever `--out` led on their node): every test here failed. The URL tasks died on the second node
(`git log failed: not a git repository`), the hidden path gave that same git message instead of
the fix, the hidden output folder "succeeded" with exit status 0 while the shards went to the
node's own tmpfs, and eight threads cloning one URL removed each other's half-made clones.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gitrepo import GitRepo
from tests.history import zoo
from tests.history.test_mine import SALT
from tests.history.test_runs import content_totals, small_repo, sorted_records
from zen_coder.errors import ZenCoderError
from zen_coder.history import sources
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.history.walk import WalkPlan, walk

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "src"
HIDE = 'mount -t tmpfs tmpfs "$0" && exec "$@"'  # $0: the folder to hide, then the command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # what a driver needs to join: the address and the auth token
    driver: Path  # the driver's own folder, hidden from the second node
    head_cache: Path
    second_cache: Path


def can_hide_folders(folder: Path) -> str | None:
    """Why a private mount namespace with a tmpfs is not available here, or None if it is."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE, str(folder), "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount in a private namespace ({probe.stderr.strip()}); run as root"
    return None


def ray_start_command(temp_dir: Path) -> list[str]:
    """`ray start` for one node of a cluster on this machine: its own folder and ports."""
    return [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
    ]


def ray_start(
    command: list[str], log: Path, env: dict[str, str], timeout: float = 120.0
) -> subprocess.Popen:
    """Start one `ray start --block` in its own session and wait until its node is up."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"ray start did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process


def stop(process: subprocess.Popen) -> None:
    """Stop a node and everything it started: its session's process group, and nothing else."""
    if process.poll() is None:
        process.terminate()  # ray start stops its own processes (no drain: see the env)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever outlived it, workers included
    process.wait()


def session_alive(process: subprocess.Popen) -> bool:
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("cluster")
    driver = root / "driver"
    driver.mkdir()
    reason = can_hide_folders(driver)
    if reason:
        pytest.skip(reason)
    port = free_port()
    env = {
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    node_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(SOURCE_ROOT),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    del node_env["RAY_ADDRESS"]
    head_cache, second_cache = root / "head-cache", root / "second-cache"
    # Ray's session folders hold Unix sockets, whose paths may not pass 107 bytes: pytest's
    # numbered folders can be too deep, so the nodes get short ones of their own.
    sessions = Path(tempfile.mkdtemp(prefix="ray-"))
    head = ray_start(
        [
            *ray_start_command(sessions / "head"),
            "--head",
            "--include-dashboard=false",
            f"--port={port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-port={free_port()}",
            "--num-cpus=0",  # every task runs on the second node
        ],
        root / "head.log",
        {**node_env, "XDG_CACHE_HOME": str(head_cache)},
    )
    try:
        second = ray_start(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                HIDE,
                str(driver),
                *ray_start_command(sessions / "second"),
                f"--address=127.0.0.1:{port}",
                "--num-cpus=2",
            ],
            root / "second.log",
            {**node_env, "XDG_CACHE_HOME": str(second_cache)},
        )
    except BaseException:
        stop(head)
        shutil.rmtree(sessions, ignore_errors=True)
        raise
    try:
        yield Cluster(env["RAY_ADDRESS"], env, driver, head_cache, second_cache)
    finally:
        stop(second)
        stop(head)
        shutil.rmtree(sessions, ignore_errors=True)
    assert not session_alive(head) and not session_alive(second), "a Ray process outlived its node"


def mine_on_cluster(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    """`zen-coder mine --executor ray` as a user runs it, with the driver's cache in its folder."""
    return subprocess.run(
        [sys.executable, "-m", "zen_coder.cli", "mine", "--executor", "ray", "--quiet", *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **cluster.env,
            "PYTHONPATH": str(SOURCE_ROOT),
            "XDG_CACHE_HOME": str(cluster.driver / "cache"),
            "ZEN_CODER_SALT": SALT.decode(),
        },
        timeout=300,
    )


def mirrors(cache: Path) -> list[str]:
    return sorted(path.name for path in (cache / "zen-coder" / "repos").glob("*.git"))


def test_url_and_path_inputs_mine_as_locally(cluster, tmp_path):
    """Two clone URLs (the second a fork of the first) and a path, mined on the second node."""
    origin = zoo.build_zoo(tmp_path / "origin")
    fork = GitRepo.clone(origin, tmp_path / "fork")
    fork.write("fork_only.py", "def fork_feature():\n    return 42\n")
    fork.commit("Add the fork's feature")
    path_repo = small_repo(tmp_path / "local", files=2)
    inputs = [f"file://{origin.path}", f"file://{fork.path}", str(path_repo.path)]

    result = mine_on_cluster(cluster, *inputs, "--out", str(tmp_path / "ray"))
    assert result.returncode == 0, result.stdout + result.stderr

    local = tmp_path / "local-run"
    specs = [RepoSpec(source) for source in inputs]
    mine(specs, local, workers=1, salt=SALT, cache_dir=tmp_path / "local-cache")
    assert sorted_records(tmp_path / "ray") == sorted_records(local)
    assert content_totals(tmp_path / "ray") == content_totals(local)
    assert content_totals(local)["commit_reasons"]["fork_duplicate"] > 0
    # The driver mirrored the URLs to plan the run; the task mirrored them again where it ran.
    assert len(mirrors(cluster.driver / "cache")) == 2
    assert mirrors(cluster.second_cache) == mirrors(cluster.driver / "cache")
    assert mirrors(cluster.head_cache) == []


def test_a_path_the_node_cannot_read_is_a_one_line_error(cluster, tmp_path):
    hidden = small_repo(cluster.driver / "private", files=1)
    shared = small_repo(tmp_path / "shared", files=1)
    result = mine_on_cluster(
        cluster, str(hidden.path), str(shared.path), "--out", str(tmp_path / "out")
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert str(hidden.path / ".git") in errors[0]
    assert "put path inputs on storage every node reads" in errors[0]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(manifest["repos"]) == {"shared"}


def test_an_output_folder_the_node_cannot_see_is_a_one_line_error(cluster, tmp_path):
    """Without the check, the task would stage its shards on the node's own disk, unseen."""
    repo = small_repo(tmp_path / "repo", files=1)
    out = cluster.driver / "out"
    result = mine_on_cluster(cluster, str(repo.path), "--out", str(out))
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert f"output folder {out}" in errors[0]
    assert "put --out on storage every Ray node reads and writes" in errors[0]


# Reaching a planned repository from another process, without a cluster.


def test_a_task_mirrors_a_url_into_its_own_cache_and_mines_the_planned_commit(tmp_path):
    origin = small_repo(tmp_path / "origin", files=2)
    planned = sources.resolve(RepoSpec(f"file://{origin.path}"), tmp_path / "driver")
    origin.write("later.py", "LATER = 1\n")
    origin.commit("A commit pushed after the run was planned")
    here = sources.reach_here(planned, tmp_path / "node")
    assert here.git_dir.parent == tmp_path / "node"
    assert here.revision == planned.revision == origin.git("rev-parse", "HEAD~1")
    assert sources.commit_count(here) == 2
    plan = WalkPlan(config=MineConfig(), salt=SALT, out=str(tmp_path / "out"))
    assert len([commit for job in walk(here, plan) for commit in job.commits]) == 2


def test_a_mirror_holding_the_planned_commits_is_used_without_the_remote(tmp_path):
    origin = small_repo(tmp_path / "origin", files=1)
    planned = sources.resolve(RepoSpec(f"file://{origin.path}"), tmp_path / "cache")
    shutil.rmtree(origin.path)
    assert sources.reach_here(planned, tmp_path / "cache").git_dir == planned.git_dir


def test_a_rewritten_remote_is_a_one_line_error(tmp_path):
    origin = small_repo(tmp_path / "origin", files=2)
    planned = sources.resolve(RepoSpec(f"file://{origin.path}"), tmp_path / "driver")
    origin.git("reset", "-q", "--hard", "HEAD~1")
    origin.git("reflog", "expire", "--expire=now", "--all")
    origin.git("gc", "-q", "--prune=now")
    with pytest.raises(ZenCoderError, match="is gone from the remote"):
        sources.reach_here(planned, tmp_path / "node")


def test_ranges_are_pinned_to_commits(tmp_path):
    repo = small_repo(tmp_path / "repo", files=3)
    spec = RepoSpec(str(repo.path), range="HEAD~2..main")
    resolved = sources.resolve(spec, tmp_path / "cache")
    assert resolved.revision == f"{repo.git('rev-parse', 'HEAD~2')}..{repo.head()}"
    assert sources.commit_count(resolved) == 2


def test_concurrent_tasks_share_one_mirror(tmp_path):
    """Eight tasks on one node mirror one URL at once, and all get the one mirror."""
    origin = zoo.build_zoo(tmp_path / "origin")
    url = f"file://{origin.path}"
    found: list[Path | Exception] = []

    def clone() -> None:
        try:
            found.append(sources._cached_clone(url, url, tmp_path / "cache"))
        except ZenCoderError as exc:
            found.append(exc)

    threads = [threading.Thread(target=clone) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and isinstance(found[0], Path), found
    mirrored = subprocess.run(
        ["git", f"--git-dir={found[0]}", "rev-parse", "HEAD"], capture_output=True, text=True
    )
    assert mirrored.stdout.strip() == origin.head()
