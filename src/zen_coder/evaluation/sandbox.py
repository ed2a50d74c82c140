"""Run one untrusted command (a compiler, a generated program) in isolation.

Generated code is untrusted: it may loop, fork without end, fill the memory or the disk, open
connections, write or delete files outside its folder, or kill the process that evaluates it.
Each command therefore runs

* in a fresh private folder (`Sandbox.path`): its working directory, $HOME and $TMPDIR, with a
  minimal environment and stdin from the caller or /dev/null;
* in its own session, so a wall-clock timeout kills its whole process group;
* in a new network namespace: no interface but a loopback that is down, so nothing to connect to;
* in a new mount namespace where /tmp, /var/tmp and /dev/shm are private tmpfs folders and
  private folders above what it must see (the sandbox folder, the Python installation) are hidden;
* under resource limits (CPU time, address space, file size, processes, no core dumps);
* when zen-coder runs as root, as an unprivileged uid and gid of its own per worker slot
  (`FIRST_ID + slot`, no groups, no new privileges): the process limit then counts this program
  only, it cannot write where that uid may not, cannot signal other processes, and after every run
  every process of that uid is killed, so a daemon it started never outlives it.

The setup happens in a tiny Python process that execs the command (`sandbox_setup.py`, run by its
path), not in a `preexec_fn`: the harness runs sandboxes from threads, where running Python code
between fork and exec is unsafe. `run_python` skips both interpreter starts of a Python program: a
warm interpreter per slot (`warm_python.py`, run by its path), root in the slot's namespaces, forks
each program, applies the same setup in the fork and runs the script there as a new `python -I`
would.

When the host lacks a piece (no namespaces in an unprivileged container, no user namespaces),
runs go on without it and `isolation()` says which, so every result records it; `weaknesses()`
says in one line what programs are then not isolated from, and `zen-coder eval` refuses to run
them unless told to (`--allow-weak-sandbox`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO

from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.sandbox_setup import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER

FIRST_ID = 1_500_000  # uid and gid of slot 0 when running as root; slot n gets FIRST_ID + n
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: replaced by private tmpfs
PRIVATE_TMP_BYTES = 256 << 20  # the size of each private tmpfs: host memory, not disk
DRAIN_SECONDS = 1.0  # after the program ends, how long to wait for its pipes to close
PYTHON_FLAGS = ("-I",)  # `run_python` is `python -I SCRIPT`: no user site folder, no $PYTHON*
SERVER_GRACE_SECONDS = 10.0  # beyond the wall clock, how long a Python server may take to reply
_SLOTS_IN_USE: set[int] = set()  # by sandboxes of this process
_SLOTS_LOCK = threading.Lock()

SETUP = Path(__file__).with_name("sandbox_setup.py")  # isolates, then execs the command
WARM_PYTHON = Path(__file__).with_name("warm_python.py")  # `run_python`'s server


@dataclass(frozen=True)
class Limits:
    """What one command may use. The defaults suit a test program; compilers may need more.

    The CPU limit is a backstop for the wall clock, which also stops programs that sleep or wait.
    By default it is one second longer, so that a busy loop ends as a timeout rather than racing
    SIGXCPU (a process's CPU time can reach its wall time); a program with several busy threads
    still meets it first.
    """

    wall_seconds: float = 10.0  # wall-clock timeout; on expiry the whole process tree is killed
    cpu_seconds: float | None = None  # RLIMIT_CPU; None: wall_seconds rounded up, plus 1 s
    memory_bytes: int | None = 2 << 30  # RLIMIT_AS; None: unlimited (the JVM and Go need that)
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: the largest file it may write
    processes: int = 64  # RLIMIT_NPROC (threads count too)
    output_bytes: int = 4096  # stdout and stderr each kept up to this many bytes


@dataclass(frozen=True)
class Completed:
    """How a command ended."""

    status: str  # "exited" (ended by itself, any exit code), "timeout" or "signal"
    returncode: int | None  # the exit code, or -signal number; None on timeout
    reason: str  # one line for a human: "exit status 1", "killed by SIGXCPU (CPU time limit)"
    stdout: str  # the first output_bytes bytes, decoded with errors="replace"
    stderr: str
    seconds: float  # wall time


@dataclass(frozen=True)
class _Mode:
    """How this host isolates a command: the namespaces it creates and whether it changes uid."""

    unshare: int  # CLONE_* flags, 0: no namespaces
    own_uid: bool  # each slot runs as FIRST_ID + slot (needs root)
    missing: str  # why a stronger mode failed, "" when none did


class Sandbox:
    """A fresh private folder for one program, its compile and run steps; a context manager.

    `slot` is the index of the worker using it (0..N-1): as root, slot n runs commands as uid
    FIRST_ID + n, so two sandboxes must not share a slot at once: in one process that is an
    error, a sandbox of another process is waited for (a lock file per slot).
    `readable` names host folders commands must read although a folder above them is private
    (a toolchain installed in root's home, as `rustup` does); the Python running zen-coder is
    always readable. Such a folder itself must be readable by all.
    """

    def __init__(
        self, slot: int = 0, parent: Path | None = None, *, readable: Iterable[Path] = ()
    ) -> None:
        if slot < 0:
            raise ZenCoderError(f"sandbox slot {slot} is negative; number workers from 0")
        self._mode = _host_mode()
        self._uid = FIRST_ID + slot if self._mode.own_uid else os.getuid()
        self._gid = FIRST_ID + slot if self._mode.own_uid else os.getgid()
        readable_folders = _readable_folders(readable)
        self._slot = slot
        self._lock = _lock_slot(slot)
        try:
            folder = tempfile.mkdtemp(prefix=f"zen-coder-sandbox-{slot}-", dir=parent)
        except BaseException:
            _unlock_slot(slot, self._lock)
            raise
        self.path = Path(folder).resolve()
        os.chown(self.path, self._uid, self._gid)
        self._masks, self._binds = _visible_folders(self.path, readable_folders)
        # `run` may leave a process its cleanup missed (one that forks and exits in a loop can
        # slip past a /proc scan); `run_python`'s server reaps every descendant exactly.
        self._may_leave_processes = False

    def write(self, name: str, text: str) -> Path:
        """Write `text` to `name` (relative, folders created) in the sandbox, owned by its user."""
        target = self.path / name
        if target.resolve() == self.path or not target.resolve().is_relative_to(self.path):
            raise ZenCoderError(f"sandbox file name {name!r} must be a relative path inside it")
        for folder in reversed(target.relative_to(self.path).parents[:-1]):
            (self.path / folder).mkdir(exist_ok=True)
            os.chown(self.path / folder, self._uid, self._gid)
        target.write_text(text, encoding="utf-8")
        os.chown(target, self._uid, self._gid)
        return target

    def run(
        self,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> Completed:
        """Run `command` in the sandbox folder under `limits`; raise ZenCoderError only when it
        cannot start (the sandbox cannot be set up, the executable is missing or unreadable)."""
        if not command:
            raise ZenCoderError("sandbox command is empty; pass the program and its arguments")
        self._may_leave_processes = True
        arguments = self._setup_arguments(limits, {**_minimal_env(self.path), **(env or {})})
        with _stdin_source(stdin) as stdin_source:
            start = time.monotonic()
            process, failure = _start(arguments, command, self.path, stdin_source, subprocess.PIPE)
        with process:
            if failure:
                process.wait()
                hint = _hint() if failure.startswith("cannot run") else ""
                raise ZenCoderError(f"sandbox cannot start {command[0]!r}: {failure}{hint}")
            return self._wait(process, limits, start)

    def run_python(
        self,
        script: str,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        *,
        python: str | None = None,
    ) -> Completed:
        """What `run([python, *PYTHON_FLAGS, script], ...)` returns (`python`: this interpreter by
        default), with the same isolation, several times faster: the program starts in a fork of
        the slot's warm interpreter (`_PythonServer`) rather than in a new interpreter behind a
        setup one. docs/evaluation.md lists what a program could tell apart.

        `script` is a file in the sandbox folder, written with `write`. Where programs would run
        as our own user (not root) they could kill the server, so `run` runs them instead.
        """
        interpreter = python or sys.executable
        if not self._mode.own_uid:
            return self.run([interpreter, *PYTHON_FLAGS, script], limits, env, stdin)
        environment = {**_minimal_env(self.path), **(env or {})}
        request = {
            "config": self._setup_arguments(limits, environment),
            "script": script,
            "wall_seconds": limits.wall_seconds,
        }
        key = _ServerKey(interpreter, self._mode.unshare, _startup_env(environment))
        try:
            reply, stdout, stderr = _serve(self._slot, key, request, stdin, limits)
        except BaseException:
            self._may_leave_processes = True  # the server may have died with the program
            raise
        if "error" in reply:
            raise ZenCoderError(f"sandbox cannot start {script!r}: {reply['error']}")
        returncode = reply["returncode"]
        return _completed(reply["ended"], returncode, limits, stdout, stderr, reply["seconds"])

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill whatever of this sandbox still runs and delete its folder."""
        try:
            if self._may_leave_processes:
                self._kill_leftovers()
            shutil.rmtree(self.path)
        finally:
            _unlock_slot(self._slot, self._lock)

    def _setup_arguments(self, limits: Limits, env: Mapping[str, str]) -> list[str]:
        """The KEY=VALUE arguments of `sandbox_setup.py exec` for one run."""
        cpu = math.ceil(limits.cpu_seconds or limits.wall_seconds + 1)
        memory = -1 if limits.memory_bytes is None else limits.memory_bytes
        processes = limits.processes
        if not self._mode.own_uid and not self._mode.unshare:  # it counts all our processes
            processes += len(_live_processes_of(os.getuid()))
        arguments = [
            f"unshare={self._mode.unshare}",
            f"uid={self._uid if self._mode.own_uid else -1}",
            f"gid={self._gid}",
            f"cwd={self.path}",
            f"tmpfs_bytes={PRIVATE_TMP_BYTES}",
            f"cpu={cpu}:{cpu + 1}",  # SIGXCPU at the soft limit, SIGKILL a second later
            f"as={memory}:{memory}",
            f"fsize={limits.file_bytes}:{limits.file_bytes}",
            f"nproc={processes}:{processes}",
        ]
        arguments += [f"{kind}={path}" for kind, path in self._masks]
        arguments += [f"{kind}={path}" for kind, path in self._binds]
        return arguments + [f"env={key}={value}" for key, value in env.items()]

    def _wait(self, process: subprocess.Popen[bytes], limits: Limits, start: float) -> Completed:
        """Collect output until the command ends or times out, then kill what it left behind."""
        assert process.stdout is not None and process.stderr is not None
        output = _Output(process.stdout.fileno(), process.stderr.fileno(), limits.output_bytes)
        ended = output.read_until_exit(process.pid, start + limits.wall_seconds)
        seconds = time.monotonic() - start
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        returncode = process.wait()
        if self._mode.own_uid and _live_processes_of(self._uid):
            _kill_every_process_of(self._uid, self._gid)
        output.read_until(time.monotonic() + DRAIN_SECONDS)
        stdout, stderr = output.texts()
        return _completed(ended, returncode, limits, stdout, stderr, seconds)

    def _kill_leftovers(self) -> None:
        """Kill every process of this slot's uid: programs can leave their process group and
        session, never their uid. Without an own uid there is nothing safe to kill."""
        if self._mode.own_uid:
            _kill_every_process_of(self._uid, self._gid)


class _Output:
    """stdout and stderr of a command, read as they come, each kept up to `limit` bytes: the rest
    is read and dropped, so a program printing without end neither blocks nor fills our memory."""

    def __init__(self, stdout_fd: int, stderr_fd: int, limit: int) -> None:
        self._fds = (stdout_fd, stderr_fd)
        self._kept = {fd: bytearray() for fd in self._fds}
        self._limit = limit
        self._selector = selectors.DefaultSelector()
        for fd in self._fds:
            self._selector.register(fd, selectors.EVENT_READ)

    def read_until_exit(self, pid: int, deadline: float) -> bool:
        """Read until process `pid` exits (True) or `deadline` passes (False)."""
        exit_fd = os.pidfd_open(pid)
        try:
            return self.read_until_readable(exit_fd, deadline)
        finally:
            os.close(exit_fd)

    def read_until_readable(self, fd: int, deadline: float) -> bool:
        """Read until `fd` has something to read (True) or `deadline` passes (False)."""
        self._selector.register(fd, selectors.EVENT_READ)
        try:
            return self._read(deadline, fd)
        finally:
            self._selector.unregister(fd)

    def read_until(self, deadline: float) -> None:
        """Read until both pipes close (everything holding them is dead) or `deadline` passes."""
        self._read(deadline, None)

    def texts(self) -> tuple[str, str]:
        """stdout and stderr as kept, decoded; a character cut at the limit becomes U+FFFD."""
        self._selector.close()
        stdout, stderr = (bytes(self._kept[fd]).decode(errors="replace") for fd in self._fds)
        return stdout, stderr

    def _read(self, deadline: float, exit_fd: int | None) -> bool:
        while self._selector.get_map():
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            for key, _ in self._selector.select(timeout):
                if key.fd == exit_fd:
                    return True
                self._read_chunk(key.fd)
        return True

    def _read_chunk(self, fd: int) -> None:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self._selector.unregister(fd)
            return
        kept = self._kept[fd]
        kept += chunk[: max(0, self._limit - len(kept))]


@dataclass(frozen=True)
class _ServerKey:
    """What a slot's Python server is fixed to at its start; a request wanting other values gets
    a new server."""

    python: str
    unshare: int  # the namespaces it runs in
    startup_env: tuple[tuple[str, str], ...]  # what the interpreter reads while it starts


class _PythonServer:
    """One slot's warm interpreter (`warm_python.py`), started as root in the slot's namespaces:
    its program children are what `run` would have started. It exits when its channel closes."""

    def __init__(self, key: _ServerKey) -> None:
        host_end, server_end = socket.socketpair()
        arguments = [
            f"unshare={key.unshare}",
            "uid=-1",  # stays root, out of reach of the programs
            "gid=-1",
            "cwd=/",
            *(f"{limit}=-1:-1" for limit in ("cpu", "as", "fsize", "nproc")),
            "deathsig=0",  # its thread may end; the server ends when the channel closes
            "env=HOME=/",  # as for programs, set: unset, `site` would import `pwd` to find it
            *(f"env={name}={value}" for name, value in key.startup_env),
        ]
        command = [key.python, *PYTHON_FLAGS, str(WARM_PYTHON), str(server_end.fileno())]
        with server_end:
            self._process, failure = _start(
                arguments, command, "/", subprocess.DEVNULL, subprocess.PIPE, (server_end.fileno(),)
            )
        if failure:
            host_end.close()
            self._process.communicate()
            raise ZenCoderError(f"sandbox cannot start the Python server {key.python}: {failure}")
        self.key = key
        self._channel = host_end

    def alive(self) -> bool:
        return self._process.poll() is None

    def run(self, request: dict, stdin_fd: int, limits: Limits) -> tuple[dict, str, str]:
        """The server's reply to `request` and the program's stdout and stderr, read as they come
        (`_Output`, as for `run`). A server that ends or hangs meanwhile is stopped: an error."""
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        with open(stdout_read, "rb", 0), open(stderr_read, "rb", 0):  # to close them
            output = _Output(stdout_read, stderr_read, limits.output_bytes)
            try:
                try:
                    self._send(request, [stdin_fd, stdout_write, stderr_write])
                finally:
                    os.close(stdout_write)  # the program holds them now
                    os.close(stderr_write)
                deadline = time.monotonic() + limits.wall_seconds + SERVER_GRACE_SECONDS
                reply = self._reply(output, deadline)
                output.read_until(time.monotonic() + DRAIN_SECONDS)
            finally:
                stdout, stderr = output.texts()
        return reply, stdout, stderr

    def close(self) -> str:
        """Stop the server: it exits when its channel closes, or is killed. What it wrote."""
        if self._channel.fileno() < 0:
            return ""
        self._channel.close()
        try:
            _, last_words = self._process.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, last_words = self._process.communicate()
        return last_words.decode(errors="replace").strip()

    def abandon(self) -> None:
        """In a forked child of the host: close its copies of the server's pipes, nothing else."""
        self._channel.close()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()

    def _send(self, request: dict, fds: list[int]) -> None:
        body = json.dumps(request).encode()
        message = len(body).to_bytes(4, "big") + body
        try:
            sent = socket.send_fds(self._channel, [message], fds)
            self._channel.sendall(message[sent:])
        except (BrokenPipeError, ConnectionResetError):
            raise _RequestUnread(self._stopped("before the request")) from None

    def _reply(self, output: _Output, deadline: float) -> dict:
        """The reply, read after the program's output that comes before it."""
        if not output.read_until_readable(self._channel.fileno(), deadline):
            raise ZenCoderError(self._stopped("no reply in time"))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            try:
                chunk = self._channel.recv(1 << 16)
            except ConnectionResetError:  # it ended with our request unread
                raise _RequestUnread(self._stopped("before reading the request")) from None
            if not chunk:
                raise ZenCoderError(self._stopped("during the run"))
            data += chunk
        return json.loads(data[4:])

    def _stopped(self, when: str) -> str:
        """Stop the server; why, for an error."""
        last_words = self.close()
        return f"the sandbox's Python server stopped {when}: {last_words or 'no message'}"


class _RequestUnread(ZenCoderError):
    """The server ended before reading a request: no program started, it may go to a new one."""


_SERVERS: dict[int, _PythonServer] = {}  # by slot, in this process
_SERVER_LOCKS: dict[int, threading.Lock] = {}  # one request at a time per slot
_SERVERS_LOCK = threading.Lock()


@contextlib.contextmanager
def _python_server(slot: int, key: _ServerKey) -> Iterator[_PythonServer]:
    """The slot's server, held for one request: started on first use, and again when it died or
    runs another interpreter."""
    with _SERVERS_LOCK:
        lock = _SERVER_LOCKS.setdefault(slot, threading.Lock())
    with lock:
        server = _SERVERS.get(slot)
        if server is None or server.key != key or not server.alive():
            if server is not None:
                server.close()
            server = _SERVERS[slot] = _PythonServer(key)
        yield server


def _serve(
    slot: int, key: _ServerKey, request: dict, stdin: str | None, limits: Limits
) -> tuple[dict, str, str]:
    """`_PythonServer.run` on the slot's server, and again on a new one when that server had
    ended unnoticed before reading the request."""
    try:
        with _python_server(slot, key) as server, _stdin_fd(stdin) as stdin_fd:
            return server.run(request, stdin_fd, limits)
    except _RequestUnread:
        pass
    with _python_server(slot, key) as server, _stdin_fd(stdin) as stdin_fd:
        return server.run(request, stdin_fd, limits)


def _stop_servers() -> None:
    """At exit: servers would stop by themselves once our end of their channel closes; waiting
    for them leaves nothing of them behind."""
    for server in list(_SERVERS.values()):
        server.close()


def _forget_servers() -> None:
    """In a child forked from this process: the servers, and the locks, which a thread the child
    lacks may hold, belong to the parent; the child starts its own."""
    global _SERVERS_LOCK
    for server in _SERVERS.values():
        server.abandon()
    _SERVERS.clear()
    _SERVER_LOCKS.clear()
    _SERVERS_LOCK = threading.Lock()


atexit.register(_stop_servers)
os.register_at_fork(after_in_child=_forget_servers)


def _startup_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The variables an interpreter reads while it starts, where a fork inherits what its server
    read: the locale (the encodings of stdio and file names) and $PATH (where a `python` without
    a folder is). `-I` ignores the $PYTHON* ones."""
    wanted = [(k, v) for k, v in env.items() if k in ("PATH", "LANG") or k.startswith("LC_")]
    return tuple(sorted(wanted))


def _completed(
    ended: bool, returncode: int, limits: Limits, stdout: str, stderr: str, seconds: float
) -> Completed:
    """How a command ended: `ended` before the wall clock, with `returncode` (-signal)."""
    if not ended:
        reason = f"timed out after {limits.wall_seconds:.1f} s"
        return Completed("timeout", None, reason, stdout, stderr, seconds)
    if returncode < 0:
        return Completed("signal", returncode, _killed_by(-returncode), stdout, stderr, seconds)
    return Completed("exited", returncode, f"exit status {returncode}", stdout, stderr, seconds)


def isolation() -> dict[str, str]:
    """What this host provides, recorded with every eval result: results from a host without
    isolation are no less correct, but a program there could have harmed the host. "mode" is
    "full" or "weak" (see `weaknesses`)."""
    mode = _host_mode()
    missing = f"none: {mode.missing}" if mode.missing else "none"
    private = ", ".join(path for path in PRIVATE_TMP_DIRS if os.path.isdir(path))
    if mode.own_uid:
        user = f"uid {FIRST_ID} + slot per worker, no groups, no new privileges"
        elsewhere = f"only where uid {FIRST_ID} + slot may write"
    else:
        user = "same user: zen-coder does not run as root"
        elsewhere = "wherever this user may write"
    return {
        "mode": "weak" if weaknesses() else "full",
        "network": "namespace: no interface up, not even loopback" if mode.unshare else missing,
        "user": user,
        "filesystem": (
            f"private {private} (tmpfs); elsewhere {elsewhere}"
            if mode.unshare
            else f"shared; writes {elsewhere}, world-writable folders included ({missing})"
        ),
        "limits": "wall clock, CPU time, address space, file size, processes, no core dumps",
    }


def weaknesses() -> str:
    """What programs are not isolated from on this host, one line for a human; "" where the
    isolation is full: root, with network and mount namespaces. Without an own uid a program can
    change this user's files and kill its processes, zen-coder's included."""
    mode = _host_mode()
    gaps = []
    if not mode.own_uid:
        gaps.append(
            "programs run as this user, as zen-coder is not root (they can change or delete its "
            "files and kill its processes, zen-coder's included)"
        )
    if not mode.unshare & CLONE_NEWNET:
        gaps.append("the network is up")
    if not mode.unshare & CLONE_NEWNS:
        gaps.append("/tmp is shared")
    if not gaps:
        return ""
    return ", ".join(gaps) + (f" ({mode.missing})" if mode.missing else "")


def require_isolation(allow_weak: bool) -> str:
    """What programs are not isolated from here ("" in full mode); a one-line error where that
    is not "" and a weak sandbox is not allowed. The one home of that rule: the CLI asks before
    a model loads, `harness.evaluate` before any program runs."""
    weak = weaknesses()
    if weak and not allow_weak:
        raise ZenCoderError(
            f"weak sandbox: {weak}; run as root (in a VM or container) for full isolation, or "
            "pass --allow-weak-sandbox to run the programs anyway"
        )
    return weak


@cache
def _host_mode() -> _Mode:
    """The strongest isolation that works here, found by trying each once per process."""
    if os.geteuid() == 0:  # never run untrusted code as root: no candidate keeps root
        candidates = [_Mode(CLONE_NEWNET | CLONE_NEWNS, True, ""), _Mode(0, True, "")]
    else:
        candidates = [
            _Mode(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS, False, ""),
            _Mode(0, False, ""),
        ]
    failures = []
    for mode in candidates:
        failure = _try_mode(mode)
        if not failure:
            return _Mode(mode.unshare, mode.own_uid, "; ".join(failures))
        failures.append(failure)
    raise ZenCoderError(
        f"cannot set up a sandbox here ({'; '.join(failures)}); run as root, or as a normal user"
    )


def _try_mode(mode: _Mode) -> str:
    """Why `true` cannot run in `mode` ("" when it can): the setup's own error message."""
    with tempfile.TemporaryDirectory(prefix="zen-coder-sandbox-probe-") as probe:
        arguments = [
            f"unshare={mode.unshare}",
            f"uid={FIRST_ID - 1 if mode.own_uid else -1}",
            f"gid={FIRST_ID - 1}",
            "cwd=/",
            f"tmpfs_bytes={1 << 20}",
            *(f"{key}=-1:-1" for key in ("cpu", "as", "fsize", "nproc")),
            f"hide={probe}",
            f"env=PATH={os.defpath}",
        ]
        process, failure = _start(arguments, ["true"], "/", subprocess.DEVNULL, subprocess.DEVNULL)
        process.wait()
        return failure


def _visible_folders(
    path: Path, readable: list[Path]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The folders to cover with an empty tmpfs ("tmp": world-writable, "hide": private folders
    above something the command needs) and the ones to bind back into them ("bind": the sandbox,
    "robind": read-only), so the sandbox user sees its folder and Python but nothing private."""
    masks = [("tmp", folder) for folder in PRIVATE_TMP_DIRS if os.path.isdir(folder)]
    needed = [("bind", path)] + [("robind", folder) for folder in readable]
    for _, folder in needed:
        blocker = _first_private_parent(folder)
        if blocker is not None and not any(_is_under(blocker, m) for _, m in masks):
            masks.append(("hide", blocker))
    binds = [(k, str(f)) for k, f in needed if any(_is_under(str(f), m) for _, m in masks)]
    return masks, binds


def _readable_folders(readable: Iterable[Path]) -> list[Path]:
    """The caller's folders and the Python installation running zen-coder, resolved."""
    folders = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    for folder in readable:
        if not Path(folder).is_dir():
            raise ZenCoderError(f"sandbox readable folder {folder} does not exist; pass a folder")
        folders.add(Path(folder).resolve())
    return sorted(folders)


def _first_private_parent(path: Path) -> str | None:
    """The topmost folder above `path` that other users cannot enter, None if there is none."""
    for parent in reversed(path.parents[:-1]):
        if not os.stat(parent).st_mode & 0o001:
            return str(parent)
    return None


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _start(
    arguments: list[str],
    command: Sequence[str],
    cwd: str | Path,
    stdin: IO[bytes] | int,
    output: int,
    keep: Sequence[int] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `command` through `sandbox_setup.py exec` (in a Python that skips site-packages and the
    environment, to start fast), in a session of its own, with the file descriptors `keep`; the
    failure it reports, "" once the command runs."""
    status_read, status_write = os.pipe()
    setup = [sys.executable, "-I", "-S", str(SETUP), "exec", str(status_write), *arguments]
    with os.fdopen(status_read, "rb") as status:
        try:
            process = subprocess.Popen(
                [*setup, "--", *command],
                cwd=cwd,
                env={},
                stdin=stdin,
                stdout=output,
                stderr=output,
                pass_fds=(status_write, *keep),
                start_new_session=True,
            )
        finally:
            os.close(status_write)
        return process, status.read().decode(errors="replace")


@contextlib.contextmanager
def _stdin_source(text: str | None) -> Iterator[IO[bytes] | int]:
    """An unlinked file holding `text` (a pipe could fill while the program does not read), or
    /dev/null."""
    if text is None:
        yield subprocess.DEVNULL
        return
    with tempfile.TemporaryFile() as source:
        source.write(text.encode("utf-8"))
        source.seek(0)
        yield source


@contextlib.contextmanager
def _stdin_fd(text: str | None) -> Iterator[int]:
    """`_stdin_source` as a file descriptor: /dev/null opened."""
    with _stdin_source(text) as source:
        if not isinstance(source, int):
            yield source.fileno()
            return
        with open(os.devnull, "rb") as devnull:
            yield devnull.fileno()


def _minimal_env(path: Path) -> dict[str, str]:
    """Just enough for compilers and interpreters: no credentials or settings of ours leak in."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(path),
        "TMPDIR": str(path),
        "LANG": "C.UTF-8",
    }


def _lock_slot(slot: int) -> int:
    """Hold the slot's lock file: two sandboxes of one slot would kill each other's processes.
    Two in this process is a mistake, an error; one in another process (a second eval on this
    host) is waited for."""
    with _SLOTS_LOCK:
        if slot in _SLOTS_IN_USE:
            raise ZenCoderError(
                f"sandbox slot {slot} is already in use; give each parallel worker its own slot"
            )
        _SLOTS_IN_USE.add(slot)
    lock = Path(tempfile.gettempdir()) / f"zen-coder-sandbox-{os.getuid()}-slot-{slot}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except BaseException:
        _unlock_slot(slot, None)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        _unlock_slot(slot, fd)
        raise
    return fd


def _unlock_slot(slot: int, fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # releases the flock
    with _SLOTS_LOCK:
        _SLOTS_IN_USE.discard(slot)


def _kill_every_process_of(uid: int, gid: int) -> None:
    """SIGKILL every process of `uid` until none is left. kill(-1) as that uid reaches all of them
    at once, whatever sessions they made, and a process cannot fork once it is signalled. The
    killer is a Python that changes its own uid: subprocess's `user=` forks instead of vforking,
    which costs as much as the harness's memory (80 ms with a model loaded)."""
    for _ in range(10):
        subprocess.run(
            [sys.executable, "-I", "-S", str(SETUP), "kill", str(uid), str(gid)],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        for _ in range(100):  # a killed process takes a moment to exit
            if not _live_processes_of(uid):
                return
            time.sleep(0.01)
    raise ZenCoderError(f"cannot kill the processes of sandbox uid {uid}; kill them by hand")


def _live_processes_of(uid: int) -> list[int]:
    """The processes (zombies aside) whose real, effective or saved uid is `uid`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as file:
                status = file.read()
        except OSError:  # it exited meanwhile
            continue
        # Line by line: the first line holds the process's name, which the program chooses.
        fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        uids = fields[b"Uid"].split()[:3]
        if str(uid).encode() in uids and not fields[b"State"].strip().startswith(b"Z"):
            pids.append(int(name))
    return pids


_SIGNAL_MEANINGS = {
    signal.SIGXCPU: "CPU time limit",
    signal.SIGXFSZ: "file size limit",
    signal.SIGSEGV: "invalid memory access",
    signal.SIGABRT: "aborted",
    signal.SIGFPE: "arithmetic error",
}


def _killed_by(number: int) -> str:
    """'killed by SIGXCPU (CPU time limit)'."""
    try:
        known = signal.Signals(number)
    except ValueError:
        return f"killed by signal {number}"
    meaning = _SIGNAL_MEANINGS.get(known)
    return f"killed by {known.name}" + (f" ({meaning})" if meaning else "")


def _hint() -> str:
    """How to fix a command the sandbox user cannot start."""
    if not _host_mode().own_uid:
        return ""
    return (
        f"; it runs as uid {FIRST_ID} + slot: install it where every user can read it, or pass "
        "its folder to Sandbox(readable=...)"
    )
