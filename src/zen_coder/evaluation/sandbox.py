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

The setup happens in a tiny Python process that execs the command (`_SETUP_AND_EXEC`), not in a
`preexec_fn`: the harness runs sandboxes from threads, where running Python code between fork and
exec is unsafe. `run_python` skips both interpreter starts of a Python program: a warm interpreter
per slot (`_PYTHON_SERVER`), root in the slot's namespaces, forks each program, applies the same
setup in the fork and runs the script there as a new `python -I` would.

When the host lacks a piece (no namespaces in an unprivileged container, no user namespaces),
runs go on without it and `isolation()` says which, so every result records it.
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

FIRST_ID = 1_500_000  # uid and gid of slot 0 when running as root; slot n gets FIRST_ID + n
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: replaced by private tmpfs
PRIVATE_TMP_BYTES = 256 << 20  # the size of each private tmpfs: host memory, not disk
DRAIN_SECONDS = 1.0  # after the program ends, how long to wait for its pipes to close
PYTHON_FLAGS = ("-I",)  # `run_python` is `python -I SCRIPT`: no user site folder, no $PYTHON*
SERVER_GRACE_SECONDS = 10.0  # beyond the wall clock, how long a Python server may take to reply
_SLOTS_IN_USE: set[int] = set()  # by sandboxes of this process
_SLOTS_LOCK = threading.Lock()

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# The steps that isolate a command, as Python source shared by `_SETUP_AND_EXEC` and
# `_PYTHON_SERVER`: both run in a fresh interpreter, outside this package. Settings come as
# KEY=VALUE items (`parse_config`); it imports little, to start fast.
_SETUP_LIBRARY = r"""
import ctypes, os, resource, sys, _signal

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def mount(source, target, kind, flags, data=None):
    encode = lambda text: None if text is None else os.fsencode(text)
    result = libc.mount(encode(source), encode(target), encode(kind), flags, encode(data))
    check(result, f"mount {target}")


def enter_namespaces(flags):
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:  # be ourselves inside it: allowed without privileges
        for name, text in [("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")]:
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)


def arrange_mounts(config):
    # Cover folders with empty tmpfs, then bind back, at their own paths, those the command needs.
    opened = {path: os.open(path, os.O_PATH) for key in ("bind", "robind")
              for path in config.get(key, [])}
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    for key, mode in [("tmp", "1777"), ("hide", "755")]:
        for path in config.get(key, []):
            options = f"mode={mode},size={config['tmpfs_bytes'][0]}"
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options)
    umask = os.umask(0o022)
    for path in sorted(opened, key=len):
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{opened[path]}", path, None, MS_BIND | MS_REC)
        if path in config.get("robind", []):
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(opened[path])
    os.umask(umask)
    os.chdir(config["cwd"][0])


def set_limits(config):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for key in ("cpu", "as", "fsize", "nproc"):
        kind = getattr(resource, f"RLIMIT_{key.upper()}")
        wanted = [int(value) for value in config[key][0].split(":")]
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:  # without privileges a hard limit cannot go up
            wanted = [ceiling if value == -1 else min(value, ceiling) for value in wanted]
        resource.setrlimit(kind, tuple(wanted))


def become(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.kill(-1, 9)  # whatever earlier commands of this uid left behind, all but ourselves


def parse_config(items):
    config = {}
    for item in items:
        key, _, value = item.partition("=")
        config.setdefault(key, []).append(value)
    return config


def environment(config):
    return dict(item.partition("=")[::2] for item in config.get("env", []))
"""

# Runs as `python -I -S -c _SETUP_AND_EXEC STATUS_FD KEY=VALUE... -- COMMAND...` with the sandbox
# folder as working directory. It reports a failure on STATUS_FD, which closes on exec: the parent
# reads an empty status when the command started.
_SETUP_AND_EXEC = (
    _SETUP_LIBRARY
    + r"""
def main(config, command):
    flags, uid, gid = (int(config[key][0]) for key in ("unshare", "uid", "gid"))
    if flags:
        enter_namespaces(flags)
    if flags & CLONE_NEWNS:
        arrange_mounts(config)
    set_limits(config)
    if uid >= 0:
        become(uid, gid)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no new privileges")
    death_signal = int(config.get("deathsig", ["9"])[0])  # 0: outlive the starting thread
    check(libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0), "parent death signal")
    for number in (_signal.SIGPIPE, _signal.SIGXFSZ):  # Python ignores them, the command must not
        _signal.signal(number, _signal.SIG_DFL)
    env = environment(config)
    try:
        os.execve(find_executable(command[0], env.get("PATH", "")), command, env)
    except OSError as error:
        raise OSError(f"cannot run {command[0]}: {error.strerror}") from None


def find_executable(name, path):
    # os.execvpe would import a module, which the sandbox user may not be able to read.
    if "/" in name:
        return name
    for folder in path.split(":"):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OSError(2, "not found in PATH")


status = int(sys.argv[1])
os.set_inheritable(status, False)
end = sys.argv.index("--")
try:
    main(parse_config(sys.argv[2:end]), sys.argv[end + 1:])
except Exception as error:
    os.write(status, str(error).encode(errors="replace"))
    os._exit(127)
"""
)


# Runs as `python -I -S -c _KILL_ALL UID GID` (as root): kill(-1) as that uid reaches every
# process of it but the killer itself.
_KILL_ALL = """
import os, sys
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
os.kill(-1, 9)
"""

# Runs as `python -I -c _PYTHON_SERVER CHANNEL_FD`, started through `_SETUP_AND_EXEC` as root in
# the network and mount namespaces of the slot, for `Sandbox.run_python`: a warm interpreter that
# forks one child per request and turns it into `python -I SCRIPT` (its own session, mounts,
# limits, uid; modules imported here forgotten; a fresh `__main__`). Requests come on the unix
# socket CHANNEL_FD as a 4-byte big-endian length and JSON ({"config": the KEY=VALUE items of
# `_SETUP_AND_EXEC`, "script", "wall_seconds"}), with the program's stdin, stdout and stderr as
# SCM_RIGHTS; each reply is framed the same way: {"ended", "returncode", "seconds"} or {"error"}.
# The server outlives every program: they run as another uid, so they cannot signal it.
_PYTHON_SERVER = (
    "import sys\nBASELINE = frozenset(sys.modules)  # what `python -I SCRIPT` starts with\n"
    + _SETUP_LIBRARY
    + r"""
import atexit, gc, json, select, time, _socket, _weakref

PR_SET_CHILD_SUBREAPER = 36
FORGOTTEN = []  # modules the server imported, forgotten by its program children


def serve(channel):
    # Answer requests until the host goes; returns only in a forked child: the request it runs.
    while (message := receive(channel)) is not None:
        request, fds = message
        status_read, status_write = os.pipe()
        gc.freeze()  # the child's collections skip the server's objects: no page copied
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(status_read)
            prepare_child(request, fds, status_write, channel)
            return request
        for fd in (*fds, status_write):
            os.close(fd)
        send(channel, outcome(pid, request, status_read, channel, start))
    return None


def receive(channel):
    data, fds = b"", []
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk, ancillary, _, _ = channel.recvmsg(1 << 16, _socket.CMSG_SPACE(3 * 4))
        if not chunk:
            return None
        data += chunk
        for _, _, payload in ancillary:  # SCM_RIGHTS: the only kind the host sends
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, 12, 4)]
    return json.loads(data[4:]), fds


def send(channel, reply):
    body = json.dumps(reply).encode()
    channel.sendall(len(body).to_bytes(4, "big") + body)


def prepare_child(request, fds, status, channel):
    # What `_SETUP_AND_EXEC` does before exec, in the fork: a failure goes to `status`.
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.close(channel.detach())  # detached: its object would close the fd number at exit
        os.closerange(3, status)  # the program gets stdin, stdout, stderr and nothing else
        os.closerange(status + 1, 1 << 30)
        config = parse_config(request["config"])
        if int(config["unshare"][0]) & CLONE_NEWNS:
            check(libc.unshare(CLONE_NEWNS), "unshare")  # private mounts: a fresh /tmp
            arrange_mounts(config)
        else:
            os.chdir(config["cwd"][0])
        set_limits(config)
        become(int(config["uid"][0]), int(config["gid"][0]))
        check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "parent death signal")
        os.environ.clear()
        os.environ.update(environment(config))
    except BaseException as error:
        os.write(status, str(error).encode(errors="replace"))
        os._exit(127)
    os.close(status)


def outcome(pid, request, status, channel, start):
    # The status pipe is read once the child has ended, not before: a wakeup less per program.
    ended = wait_for(pid, start + request["wall_seconds"], channel)
    seconds = time.monotonic() - start
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass
    returncode = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    config = parse_config(request["config"])
    end_descendants(int(config["uid"][0]), int(config["gid"][0]))
    with open(status, "rb") as pipe:
        failure = pipe.read().decode(errors="replace")
    if ended is None:  # the host has gone: nobody wants the result, nor the server
        os._exit(0)
    if failure:
        return {"error": failure}
    return {"ended": ended, "returncode": returncode, "seconds": seconds}


def wait_for(pid, deadline, channel):
    # True when `pid` exits before `deadline`, False when it does not, None when the host goes.
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(channel.fileno(), select.POLLIN)
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(int(remaining * 1000) + 1))
            if pidfd in events:
                return True
            if events:
                return None
        return False
    finally:
        os.close(pidfd)


def end_descendants(uid, gid):
    # As subreaper the server inherits every orphan of the program: once waitpid finds no child,
    # nothing of it runs. Those left get SIGKILL from a child that takes the program's uid, as
    # kill(-1) then reaches all of them at once and nothing else.
    killed = False
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if killed else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            killer = os.fork()
            if killer == 0:
                try:
                    become(uid, gid)
                finally:
                    os._exit(0)
            os.waitpid(killer, 0)
            killed = True


def become_main(script):
    # The state `python -I SCRIPT` starts in: the modules the server imported forgotten (a
    # program importing them gets fresh ones; kept alive here, as freeing them would copy pages),
    # `sys.argv`, a new `__main__` module.
    for name in [name for name in sys.modules if name not in BASELINE]:
        FORGOTTEN.append(module := sys.modules.pop(name))
        parent, _, child = name.rpartition(".")
        if parent in BASELINE and getattr(sys.modules[parent], child, None) is module:
            delattr(sys.modules[parent], child)
    # `site` added the folders of .pth files as the host saw them; a new interpreter here adds
    # only those the sandbox can see (a checkout under the host's /tmp is hidden, for one).
    sys.path[:] = [entry for entry in sys.path if entry.endswith(".zip") or os.path.isdir(entry)]
    path = os.path.abspath(script)
    sys.argv = [script]
    sys.orig_argv = [*sys.orig_argv[: sys.orig_argv.index("-c")], script]
    main = type(sys)("__main__")
    loader = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    builtins = sys.modules["builtins"]
    main.__dict__.update(__loader__=loader, __annotations__={}, __builtins__=builtins)
    main.__dict__.update(__file__=path, __cached__=None)
    sys.modules["__main__"] = main
    return path, main.__dict__


def compiled(path):
    # The interpreter's own messages: a missing file ends with status 2, a syntax error with 1.
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError as error:
        reason = f"[Errno {error.errno}] {error.strerror}"
        sys.stderr.write(f"{sys.orig_argv[0]}: can't open file {path!r}: {reason}\n")
        finalize(2)
    try:
        if (null := source.find(b"\0")) >= 0:  # the file reader's message, not compile()'s
            line = source[source.rfind(b"\n", 0, null) + 1 : null].decode(errors="replace")
            where = (path, source.count(b"\n", 0, null) + 1, None, line)
            raise SyntaxError("source code cannot contain null bytes", where)
        return compile(source, path, "exec", dont_inherit=True)
    except Exception as error:
        finalize(uncaught(error.with_traceback(None)))


def exit_status(error):
    # The interpreter's reading of SystemExit's code: its low byte, or printed, and 1.
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < 1 << 63 else 255
    sys.stderr.write(f"{code}\n")
    return 1


def uncaught(error):
    # The interpreter prints an exception that ends the program; KeyboardInterrupt exits by SIGINT.
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, error.__traceback__
    sys.excepthook(type(error), error, error.__traceback__)
    return -_signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1


def finalize(status):
    # What the interpreter does at exit that the program can see, in its order: wait for its
    # threads, call atexit functions, flush stdio (status 120 when stdout cannot be), tear down
    # the program's modules and collect garbage, so files flush and finalizers run; then end.
    # Tearing down the whole interpreter would copy every page of the server.
    if (threading := sys.modules.get("threading")) is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    flushed = flush_stdio(report=True)
    if gc.isenabled():
        gc.collect()
    tear_down_modules()
    flush_stdio(report=False)  # what finalizers printed: the interpreter's closing of the files
    if status < 0:
        _signal.signal(-status, _signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if flushed else 120)


def flush_stdio(report):
    flushed = True
    for name in ("stdout", "stderr"):
        file = getattr(sys, name, None)
        if file is None or getattr(file, "closed", False):
            continue
        try:
            file.flush()
        except Exception as error:
            flushed = False
            if report and name == "stdout":
                sys.stderr.write(f"Exception ignored in: {file!r}\n")
                sys.excepthook(type(error), error.with_traceback(None), None)
    return flushed


def tear_down_modules():
    # The interpreter's module teardown, applied to the program's modules: forget every module,
    # collect garbage, then clear the globals of those still alive as it does, and collect again.
    for name in ("path", "argv", "ps1", "ps2", "last_type", "last_value", "last_traceback",
                 "path_hooks", "path_importer_cache", "meta_path", "__interactivehook__"):
        setattr(sys, name, None)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
    servers = [name for name in sys.modules if name in BASELINE and name != "__main__"]
    FORGOTTEN.extend(sys.modules[name] for name in servers)  # kept: the server's, not torn down
    programs = [_weakref.ref(module) for name, module in sys.modules.items()
                if name not in servers and isinstance(module, type(sys))]
    sys.modules.clear()
    BUILTINS.__dict__.clear()
    BUILTINS.__dict__.update(BUILTINS_AT_START)
    gc.collect()
    for reference in reversed(programs):
        if (module := reference()) is not None:
            for first_pass in (True, False):
                for key in list(module.__dict__):
                    if isinstance(key, str) and (
                        key[:1] == "_" and key[1:2] != "_" if first_pass else key != "__builtins__"
                    ):
                        module.__dict__[key] = None
    gc.collect()


channel = _socket.socket(fileno=int(sys.argv[1]))
check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "child subreaper")
request = serve(channel)
if request is None:
    sys.exit(0)
BUILTINS = sys.modules["builtins"]
BUILTINS_AT_START = dict(BUILTINS.__dict__)
path, namespace = become_main(request["script"])
program = type(serve)(compiled(path), namespace)  # a call, not exec(): one frame less deep
try:
    program()
except SystemExit as error:
    status = exit_status(error)
except BaseException as error:
    status = uncaught(error.with_traceback(error.__traceback__.tb_next))
else:
    status = 0
del program, namespace  # the program's globals: its teardown clears them
finalize(status)
"""
)


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
        """The KEY=VALUE arguments of `_SETUP_AND_EXEC` for one run."""
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
    """One slot's warm interpreter (`_PYTHON_SERVER`), started as root in the slot's namespaces:
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
        command = [key.python, *PYTHON_FLAGS, "-c", _PYTHON_SERVER, str(server_end.fileno())]
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
    isolation are no less correct, but a program there could have harmed the host."""
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
        "network": "namespace: no interface up, not even loopback" if mode.unshare else missing,
        "user": user,
        "filesystem": (
            f"private {private} (tmpfs); elsewhere {elsewhere}"
            if mode.unshare
            else f"shared; writes {elsewhere}, world-writable folders included ({missing})"
        ),
        "limits": "wall clock, CPU time, address space, file size, processes, no core dumps",
    }


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
    """Start `command` through `_SETUP_AND_EXEC` (in a Python that skips site-packages and the
    environment, to start fast), in a session of its own, with the file descriptors `keep`; the
    failure it reports, "" once the command runs."""
    status_read, status_write = os.pipe()
    setup = [sys.executable, "-I", "-S", "-c", _SETUP_AND_EXEC, str(status_write), *arguments]
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
            [sys.executable, "-I", "-S", "-c", _KILL_ALL, str(uid), str(gid)],
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
