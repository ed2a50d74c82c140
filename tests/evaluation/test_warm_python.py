"""`warm_python.py`, the server that forks each Python program of a slot: its framing, its reading
of an exit, its wait, and the server itself as a real process spoken to over its socket as the
sandbox does, without the sandbox around it. The end-to-end attacks and the comparisons with a new
interpreter are in test_sandbox.py."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from zen_coder.evaluation import warm_python
from zen_coder.evaluation.sandbox import FIRST_ID, WARM_PYTHON

UID = FIRST_ID + 941  # far from the slots of a harness or of test_sandbox.py
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server's programs take another uid")


def framed(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return len(body).to_bytes(4, "big") + body


def read_framed(channel: socket.socket) -> dict:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = channel.recv(1 << 16)
        assert chunk, "the channel closed mid-message"
        data += chunk
    return json.loads(data[4:])


def test_a_request_comes_with_its_three_descriptors():
    """A request larger than one read (several chunks), its descriptors usable on the other side,
    then None once the host closes the channel."""
    host, server = socket.socketpair()
    request = {"script": "main.py", "config": ["env=X=" + "x" * 500_000], "wall_seconds": 1.0}
    read, write = os.pipe()
    with host, server, os.fdopen(read, "rb") as pipe:

        def send() -> None:  # as `_PythonServer._send` does, while the server reads
            message = framed(request)
            sent = socket.send_fds(host, [message], [write, write, write])
            host.sendall(message[sent:])

        sender = threading.Thread(target=send)
        sender.start()
        received, fds = warm_python.receive(server)
        sender.join()
        os.close(write)
        assert received == request
        assert len(fds) == 3
        os.write(fds[1], b"through")
        for fd in fds:
            os.close(fd)
        assert pipe.read() == b"through"
        host.shutdown(socket.SHUT_WR)
        assert warm_python.receive(server) is None


def test_a_reply_is_framed_as_requests_are():
    host, server = socket.socketpair()
    with host, server:
        reply = {"ended": True, "returncode": 3, "seconds": 0.5}
        warm_python.send(server, reply)
        assert read_framed(host) == reply


EXITS = [(), (None,), (0,), (3,), (300,), (-1,), (1 << 70,), ("bye",), (1, 2)]


@pytest.mark.parametrize("arguments", EXITS, ids=repr)
def test_exit_status_reads_system_exit_as_the_interpreter_does(arguments, capfd):
    fresh = subprocess.run(
        [sys.executable, "-I", "-c", f"raise SystemExit(*{arguments!r})"],
        capture_output=True,
        text=True,
    )
    status = warm_python.exit_status(SystemExit(*arguments))
    assert (status, capfd.readouterr().err) == (fresh.returncode, fresh.stderr)


def test_wait_for_tells_an_exit_a_timeout_and_the_host_going():
    host, server = socket.socketpair()
    with host, server, subprocess.Popen(["sleep", "30"]) as sleeper:
        assert warm_python.wait_for(sleeper.pid, time.monotonic() + 0.1, server) is False
        host.send(b"!")  # the host sends nothing during a run: this means it has gone
        assert warm_python.wait_for(sleeper.pid, time.monotonic() + 30, server) is None
        assert server.recv(1) == b"!"
        sleeper.kill()
        assert warm_python.wait_for(sleeper.pid, time.monotonic() + 30, server) is True


@pytest.fixture
def server():
    """The server, started by its path as the sandbox starts it (without the namespaces), and
    a world-readable folder for its programs."""
    host, server_end = socket.socketpair()
    with server_end:
        process = subprocess.Popen(
            [sys.executable, "-I", str(WARM_PYTHON), str(server_end.fileno())],
            pass_fds=(server_end.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    folder = tempfile.mkdtemp(prefix="zen-coder-warm-python-test-")
    os.chmod(folder, 0o755)
    try:
        yield host, process, folder
    finally:
        host.close()
        process.wait(timeout=30)
        shutil.rmtree(folder)


def run(host: socket.socket, folder: str, code: str, wall_seconds: float = 30.0, cwd=None):
    """One request, as the sandbox sends it: the reply, and the program's stdout and stderr."""
    with open(os.path.join(folder, "main.py"), "w") as file:
        file.write(code)
    config = [
        "unshare=0",
        f"uid={UID}",
        f"gid={UID}",
        f"cwd={cwd or folder}",
        "cpu=60:61",
        "as=-1:-1",
        "fsize=1048576:1048576",
        "nproc=16:16",
        "env=PATH=/usr/bin:/bin",
        f"env=HOME={folder}",
    ]
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    with open(os.devnull, "rb") as stdin:
        message = framed({"config": config, "script": "main.py", "wall_seconds": wall_seconds})
        socket.send_fds(host, [message], [stdin.fileno(), stdout_write, stderr_write])
    os.close(stdout_write)
    os.close(stderr_write)
    reply = read_framed(host)
    with os.fdopen(stdout_read) as stdout, os.fdopen(stderr_read) as stderr:
        return reply, stdout.read(), stderr.read()


@as_root
def test_the_server_runs_a_program_as_a_new_interpreter_would(server):
    host, process, folder = server
    code = (
        "import os, sys\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), sys.argv)\n"
        "print(sorted(os.environ), os.getppid(), os.getsid(0) == os.getpid())\n"
        "sys.exit(3)\n"
    )
    reply, stdout, stderr = run(host, folder, code)
    assert (reply["ended"], reply["returncode"], stderr) == (True, 3, "")
    assert stdout.splitlines() == [
        f"{UID} {UID} [] {folder} ['main.py']",
        f"['HOME', 'PATH'] {process.pid} True",
    ]
    reply, stdout, _ = run(host, folder, "print('again')")  # the server serves on
    assert (reply["returncode"], stdout) == (0, "again\n")


@as_root
def test_the_server_stops_a_program_at_its_wall_clock(server):
    host, _, folder = server
    reply, _, _ = run(host, folder, "while True: pass", wall_seconds=0.5)
    assert (reply["ended"], reply["returncode"]) == (False, -9)


@as_root
def test_the_server_reaps_what_a_program_leaves(server):
    """A daemon in a session of its own outlives its program: the server, its subreaper, kills
    it before it replies. (Without `end_descendants` the daemon still sleeps.)"""
    host, _, folder = server
    code = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    for fd in (0, 1, 2):  # the output pipes close when the program ends\n"
        "        os.dup2(os.open(os.devnull, os.O_RDWR), fd)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid)\n"
    )
    reply, stdout, _ = run(host, folder, code)
    assert (reply["ended"], reply["returncode"]) == (True, 0)
    assert not os.path.exists(f"/proc/{int(stdout)}")  # killed and reaped


@as_root
def test_the_server_reports_a_failed_setup(server):
    host, _, folder = server
    reply, stdout, _ = run(host, folder, "print('started')", cwd=os.path.join(folder, "absent"))
    assert "No such file or directory" in reply["error"]
    assert stdout == ""


@as_root
def test_the_server_ends_when_its_channel_closes(server):
    host, process, folder = server
    assert run(host, folder, "pass")[0]["returncode"] == 0
    host.close()
    assert process.wait(timeout=30) == 0
