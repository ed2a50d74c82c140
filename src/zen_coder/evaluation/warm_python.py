"""A warm interpreter that forks each Python program of a sandbox slot: `Sandbox.run_python`.

`sandbox.py` starts it by its path, through `sandbox_setup.py exec`, as root in the network and
mount namespaces of the slot:

    python -I warm_python.py CHANNEL_FD

It forks one child per request and turns the child into what `python -I SCRIPT` would be: its own
session, mounts, limits and uid (`sandbox_setup`'s steps), the modules imported here forgotten, a
fresh `__main__`, and at the end the interpreter's exit. The server outlives every program: they
run as another uid, so they cannot signal it.

Protocol, on the unix socket CHANNEL_FD: a request is a 4-byte big-endian length and JSON,
{"config": the KEY=VALUE items of `sandbox_setup.py exec`, "script", "wall_seconds"}, with the
program's stdin, stdout and stderr attached as SCM_RIGHTS; each reply is framed the same way:
{"ended", "returncode", "seconds"} or {"error"}. The server exits when the channel closes.

It runs in the interpreter of the programs, which may be any Python from 3.9 on (`run_python`'s
`python`), so it uses nothing newer and nothing outside the standard library: annotations that
3.9 cannot evaluate are quoted (`from __future__ import annotations` would import a module that a
new interpreter does not have). Running it by path under `-I` keeps its folder, and zen-coder's
package, off the programs' `sys.path`.
"""

# BASELINE must be taken before this module imports anything:
# ruff: noqa: E402
import sys

BASELINE = frozenset(sys.modules)  # what `python -I SCRIPT` starts with
FINDERS_AT_START = frozenset(sys.path_importer_cache)  # the folders it had looked in, and this file

import _signal
import _socket
import _weakref
import atexit
import builtins
import contextlib
import gc
import json
import os
import select
import time

if __spec__ is None:  # run by path: `-I` leaves this folder off sys.path, as programs need
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_setup as setup

    sys.path_importer_cache.pop(sys.path.pop(0), None)
else:  # imported from the package (tests)
    from zen_coder.evaluation import sandbox_setup as setup

PR_SET_CHILD_SUBREAPER = 36
FORGOTTEN = []  # modules the server imported, forgotten by its program children
BUILTINS_AT_START = {}  # the builtins module's namespace as the program starts, for its teardown


def serve(channel: _socket.socket) -> "dict | None":
    """Answer requests until the host goes (None). Returns only in a forked child: the request it
    is to run."""
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


def receive(channel: _socket.socket) -> "tuple[dict, list[int]] | None":
    """The next request and the file descriptors that came with it; None when the host has
    closed the channel."""
    data, fds = b"", []
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk, ancillary, _, _ = channel.recvmsg(1 << 16, _socket.CMSG_SPACE(3 * 4))
        if not chunk:
            return None
        data += chunk
        for _, _, payload in ancillary:  # SCM_RIGHTS: the only kind the host sends
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, 12, 4)]
    return json.loads(data[4:]), fds


def send(channel: _socket.socket, reply: dict) -> None:
    body = json.dumps(reply).encode()
    channel.sendall(len(body).to_bytes(4, "big") + body)


def prepare_child(request: dict, fds: list[int], status: int, channel: _socket.socket) -> None:
    """In the fork, what `sandbox_setup.py exec` does before exec; a failure goes to `status`
    and ends the child."""
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.close(channel.detach())  # detached: its object would close the fd number at exit
        os.closerange(3, status)  # the program gets stdin, stdout, stderr and nothing else
        os.closerange(status + 1, 1 << 30)
        config = setup.parse_config(request["config"])
        if int(config["unshare"][0]) & setup.CLONE_NEWNS:
            setup.libc_call("unshare", setup.CLONE_NEWNS, what="unshare")  # a fresh /tmp
            setup.arrange_mounts(config)
        else:
            os.chdir(config["cwd"][0])
        setup.set_limits(config)
        setup.become(int(config["uid"][0]), int(config["gid"][0]))
        setup.libc_call("prctl", setup.PR_SET_PDEATHSIG, 9, 0, 0, 0, what="parent death signal")
        os.environ.clear()
        os.environ.update(setup.environment(config))
    except BaseException as error:
        os.write(status, str(error).encode(errors="replace"))
        os._exit(127)
    os.close(status)


def outcome(pid: int, request: dict, status: int, channel: _socket.socket, start: float) -> dict:
    """The reply for the child `pid` once it ended or ran out of time, and nothing of it runs.
    The status pipe is read once the child has ended, not before: a wakeup less per program."""
    ended = wait_for(pid, start + request["wall_seconds"], channel)
    seconds = time.monotonic() - start
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, 9)
    returncode = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    config = setup.parse_config(request["config"])
    end_descendants(int(config["uid"][0]), int(config["gid"][0]))
    with open(status, "rb") as pipe:
        failure = pipe.read().decode(errors="replace")
    if ended is None:  # the host has gone: nobody wants the result, nor the server
        os._exit(0)
    if failure:
        return {"error": failure}
    return {"ended": ended, "returncode": returncode, "seconds": seconds}


def wait_for(pid: int, deadline: float, channel: _socket.socket) -> "bool | None":
    """True when `pid` exits before `deadline`, False when it does not, None when the host goes
    (anything arriving on the channel meanwhile: the host sends nothing during a run)."""
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


def end_descendants(uid: int, gid: int) -> None:
    """Reap every process the program left. As subreaper the server inherits every orphan of the
    program: once waitpid finds no child, nothing of it runs. Those left get SIGKILL from a child
    that takes the program's uid, as kill(-1) then reaches all of them at once and nothing else."""
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
                    setup.become(uid, gid)
                finally:
                    os._exit(0)
            os.waitpid(killer, 0)
            killed = True


def forget_finders() -> None:
    """Drop the finders cached while this server imported its modules (their packages' folders,
    this one's): a program starts with those of `python -I SCRIPT`. Done once, in the server, as
    each fork that freed them would copy the pages they are on."""
    for folder in [folder for folder in sys.path_importer_cache if folder not in FINDERS_AT_START]:
        del sys.path_importer_cache[folder]


def become_main(script: str) -> dict:
    """The state `python -I SCRIPT` starts in; the new `__main__`'s namespace. The modules the
    server imported are forgotten (a program importing them gets fresh ones; they are kept alive
    here, as freeing them would copy pages), `sys.argv` and `sys.orig_argv` are the program's."""
    for name in [name for name in sys.modules if name not in BASELINE]:
        FORGOTTEN.append(module := sys.modules.pop(name))
        parent, _, child = name.rpartition(".")
        if parent in BASELINE and getattr(sys.modules[parent], child, None) is module:
            delattr(sys.modules[parent], child)
    # `site` added the folders of .pth files as the host saw them; a new interpreter here adds
    # only those the sandbox can see (a checkout under the host's /tmp is hidden, for one).
    sys.path[:] = [entry for entry in sys.path if entry.endswith(".zip") or os.path.isdir(entry)]
    path = os.path.abspath(script)
    # The interpreter looked for an importer of the file it runs: this server, not the program.
    if (server := os.path.abspath(__file__)) in sys.path_importer_cache:
        sys.path_importer_cache[path] = sys.path_importer_cache.pop(server)
    sys.orig_argv = [*sys.orig_argv[: len(sys.orig_argv) - len(sys.argv)], script]
    sys.argv = [script]
    main = type(sys)("__main__")
    loader = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    main.__dict__.update(__loader__=loader, __annotations__={}, __builtins__=builtins)
    main.__dict__.update(__file__=path, __cached__=None)
    sys.modules["__main__"] = main
    return main.__dict__


def compiled(path: str):  # -> CodeType; `types` is not imported, to start like `python -I`
    """The program's code. A missing file ends the program with status 2, a syntax error with 1,
    and the interpreter's own messages."""
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


def exit_status(error: SystemExit) -> int:
    """The interpreter's reading of SystemExit's code: its low byte, or printed, and 1."""
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < 1 << 63 else 255
    sys.stderr.write(f"{code}\n")
    return 1


def uncaught(error: BaseException) -> int:
    """Print an exception that ends the program, as the interpreter does; the status to end with
    (-SIGINT: KeyboardInterrupt exits by that signal)."""
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, error.__traceback__
    sys.excepthook(type(error), error, error.__traceback__)
    return -_signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1


def finalize(status: int) -> None:
    """What the interpreter does at exit that the program can see, in its order: wait for its
    threads, call atexit functions, flush stdio (status 120 when stdout cannot be), tear down the
    program's modules and collect garbage, so files flush and finalizers run; then end. Tearing
    down the whole interpreter would copy every page of the server."""
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


def flush_stdio(report: bool) -> bool:
    """Flush sys.stdout and sys.stderr; False when one could not be. `report`: print stdout's
    failure as the interpreter does."""
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


def tear_down_modules() -> None:
    """The interpreter's module teardown, applied to the program's modules: forget every module,
    collect garbage, then clear the globals of those still alive as it does, and collect again."""
    for name in (
        *("path", "argv", "ps1", "ps2", "last_type", "last_value", "last_traceback"),
        *("path_hooks", "path_importer_cache", "meta_path", "__interactivehook__"),
    ):
        setattr(sys, name, None)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
    servers = [name for name in sys.modules if name in BASELINE and name != "__main__"]
    FORGOTTEN.extend(sys.modules[name] for name in servers)  # kept: the server's, not torn down
    programs = [
        _weakref.ref(module)
        for name, module in sys.modules.items()
        if name not in servers and isinstance(module, type(sys))
    ]
    sys.modules.clear()
    builtins.__dict__.clear()
    builtins.__dict__.update(BUILTINS_AT_START)
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


if __name__ == "__main__":
    # At module level, not in a function: the program's frame is one above this one, as the
    # tests document, not two.
    channel = _socket.socket(fileno=int(sys.argv[1]))
    setup.libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="child subreaper")
    forget_finders()
    request = serve(channel)
    if request is None:
        sys.exit(0)
    BUILTINS_AT_START.update(builtins.__dict__)
    namespace = become_main(request["script"])
    program = type(serve)(compiled(namespace["__file__"]), namespace)  # a call, not exec()
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
