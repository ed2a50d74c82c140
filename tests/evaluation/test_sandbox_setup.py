"""`sandbox_setup.py`, the steps that isolate a command: its functions, and the file run as the
sandbox runs it (`python -I -S sandbox_setup.py exec|kill ...`) in real processes. The end-to-end
attacks are in test_sandbox.py."""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.evaluation.test_sandbox import live_processes
from zen_coder.evaluation import sandbox_setup
from zen_coder.evaluation.sandbox import FIRST_ID, SETUP
from zen_coder.evaluation.sandbox_setup import environment, find_executable, parse_config

UID = FIRST_ID + 940  # far from the slots of a harness or of test_sandbox.py
NO_LIMITS = [f"{key}=-1:-1" for key in sandbox_setup.LIMITS]


def test_config_keeps_every_value_in_order():
    config = parse_config(["env=A=1=2", "hide=/a", "hide=/b", "cwd=", "env=B="])
    assert config == {"env": ["A=1=2", "B="], "hide": ["/a", "/b"], "cwd": [""]}
    assert environment(config) == {"A": "1=2", "B": ""}
    assert environment(parse_config([])) == {}


def test_find_executable_searches_path_as_exec_does(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)  # the first one is not executable: exec skips it
    assert find_executable("tool", f"{tmp_path / 'none'}:{first}:{second}") == str(second / "tool")
    assert find_executable("./anything", "") == "./anything"  # a path is taken as it is
    with pytest.raises(OSError, match="not found in PATH"):
        find_executable("tool", str(first))


def limits_in_a_child(config: list[str], hard_fsize: int | None = None) -> dict:
    """The rlimits a forked child has after `set_limits(config)`, its file size ceiling lowered
    to `hard_fsize` first (as a host without privileges may have it)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if hard_fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (hard_fsize, hard_fsize))
            sandbox_setup.set_limits(parse_config(config))
            names = ("CORE", *(key.upper() for key in sandbox_setup.LIMITS))
            seen = {name: resource.getrlimit(getattr(resource, f"RLIMIT_{name}")) for name in names}
            os.write(write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return {name: tuple(values) for name, values in seen.items()}


def test_set_limits_sets_each_limit_and_no_core_dumps():
    config = ["cpu=5:6", "as=1073741824:1073741824", "fsize=4096:8192", "nproc=100:100"]
    assert limits_in_a_child(config) == {
        "CORE": (0, 0),
        "CPU": (5, 6),
        "AS": (1 << 30, 1 << 30),
        "FSIZE": (4096, 8192),
        "NPROC": (100, 100),
    }


def test_set_limits_stays_under_a_lower_ceiling():
    """Without privileges a hard limit cannot go up: "unlimited" and a larger value get the
    ceiling instead of failing (checked by hand: without the clamp, setrlimit raises here)."""
    ceiling = 1 << 20
    seen = limits_in_a_child(["cpu=-1:-1", "as=-1:-1", "fsize=-1:-1", "nproc=-1:-1"], ceiling)
    assert seen["FSIZE"] == (ceiling, ceiling)
    seen = limits_in_a_child(
        ["cpu=-1:-1", "as=-1:-1", "fsize=4096:8388608", "nproc=-1:-1"], ceiling
    )
    assert seen["FSIZE"] == (4096, ceiling)


def start_setup(
    arguments: list[str], command: list[str], cwd: Path
) -> tuple[subprocess.Popen, str]:
    """`sandbox_setup.py exec` as the sandbox starts it; the failure it reports, "" once the
    command runs."""
    status_read, status_write = os.pipe()
    with os.fdopen(status_read, "rb") as status:
        try:
            setup = [sys.executable, "-I", "-S", str(SETUP), "exec", str(status_write)]
            process = subprocess.Popen(
                [*setup, *arguments, "--", *command],
                cwd=cwd,
                env={},
                stdout=subprocess.PIPE,
                pass_fds=(status_write,),
            )
        finally:
            os.close(status_write)
        return process, status.read().decode()


def test_exec_runs_the_command_with_its_settings(tmp_path):
    arguments = [
        "unshare=0",
        "uid=-1",
        "gid=-1",
        f"cwd={tmp_path}",
        *NO_LIMITS[:2],
        "fsize=1048576:1048576",
        NO_LIMITS[3],
        "env=PATH=/usr/bin:/bin",
        "env=GREETING=a=b",
    ]
    command = ["sh", "-c", 'echo "$GREETING"; ulimit -f; env | sort']
    process, failure = start_setup(arguments, command, tmp_path)
    stdout, _ = process.communicate()
    assert (failure, process.returncode) == ("", 0)
    lines = stdout.decode().splitlines()
    assert lines[:2] == ["a=b", "2048"]  # 512-byte blocks
    assert {"GREETING=a=b", "PATH=/usr/bin:/bin"} <= set(lines[2:])
    assert not any(line.startswith(("HOME=", "PYTHON")) for line in lines)


def test_exec_reports_a_command_that_cannot_start(tmp_path):
    arguments = ["unshare=0", "uid=-1", "gid=-1", f"cwd={tmp_path}", *NO_LIMITS, "env=PATH=/bin"]
    process, failure = start_setup(arguments, ["no-such-tool"], tmp_path)
    stdout, _ = process.communicate()
    assert failure == "cannot run no-such-tool: not found in PATH"
    assert (stdout, process.returncode) == (b"", 127)


@pytest.mark.skipif(os.geteuid() != 0, reason="taking another uid needs root")
def test_kill_ends_every_process_of_the_uid(tmp_path):
    """A sleeper of the uid and its grandchild in a session of its own: `kill` ends both (and
    only they run as that uid), and the killer itself exits normally."""
    arguments = ["unshare=0", f"uid={UID}", f"gid={UID}", f"cwd={tmp_path}", *NO_LIMITS]
    command = ["/bin/sh", "-c", "setsid /bin/sleep 60 & exec /bin/sleep 60"]
    sleeper, failure = start_setup([*arguments, "env=PATH=/bin"], command, tmp_path)
    try:
        assert failure == ""
        deadline = time.monotonic() + 10
        while len(live_processes(UID)) < 2:
            assert time.monotonic() < deadline and sleeper.poll() is None, "no sleepers"
            time.sleep(0.01)
        killer = subprocess.run(
            [sys.executable, "-I", "-S", str(SETUP), "kill", str(UID), str(UID)]
        )
        assert killer.returncode == 0
        assert sleeper.wait(timeout=10) == -9
        deadline = time.monotonic() + 10
        while live_processes(UID):  # the grandchild, in a session of its own, dies too
            assert time.monotonic() < deadline, live_processes(UID)
            time.sleep(0.01)
    finally:  # when `kill` failed, the test does it: nothing of the test outlives it
        for pid in live_processes(UID):
            os.kill(pid, 9)
        sleeper.wait()
