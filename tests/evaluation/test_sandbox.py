"""The sandbox against real attacks: each test runs the attack in a real process, then checks both
what the sandbox reports and that the host (this test process, its files, its network, the
process table) came out unharmed. Isolations the host lacks skip with `isolation()`'s reason.

Attacks written in Python run both ways: `run` (`python -c` behind the setup process) and
`run_python` (a fork of the slot's warm interpreter), which must also behave exactly like
`python -I script` and let nothing of one program reach the next."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zen_coder.errors import ZenCoderError
from zen_coder.evaluation import sandbox as sandbox_module
from zen_coder.evaluation.sandbox import (
    FIRST_ID,
    PYTHON_FLAGS,
    Limits,
    Sandbox,
    isolation,
    weaknesses,
)

SLOT = 900  # far from the slots a harness running beside the tests would use
PYTHON = sys.executable
QUICK = Limits(wall_seconds=5.0)
PYTHON_RUNS = ("run", "run_python")


def live_processes(uid: int) -> list[int]:
    """Processes (zombies aside) whose real, effective or saved uid is `uid`."""
    pids = []
    for status_file in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status_file.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if str(uid) in fields["Uid"].split()[:3] and not fields["State"].strip().startswith("Z"):
            pids.append(int(status_file.parent.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def host_forks_fine() -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


def python(sandbox: Sandbox, code: str, limits: Limits = QUICK, method: str = "run", **kwargs):
    """`code` run by `python -c` through `run`, or as a script through `run_python`."""
    if method == "run":
        return sandbox.run([PYTHON, "-c", code], limits, **kwargs)
    sandbox.write("main.py", code)
    return sandbox.run_python("main.py", limits, **kwargs)


def server_pid(slot: int) -> int:
    """The pid of the slot's Python server, which programs must not be able to harm."""
    return sandbox_module._SERVERS[slot]._process.pid


@pytest.fixture
def sandbox():
    with Sandbox(SLOT) as box:
        yield box


@pytest.fixture
def own_uid() -> int:
    """The uid of slot SLOT's programs; skips where programs run as our own user."""
    if not isolation()["user"].startswith("uid"):
        pytest.skip(f"programs run as this user here: {isolation()['user']}")
    return FIRST_ID + SLOT


@pytest.fixture
def no_network() -> None:
    if not isolation()["network"].startswith("namespace"):
        pytest.skip(f"no network isolation here: {isolation()['network']}")


def test_isolation_names_each_protection():
    report = isolation()
    assert set(report) >= {"mode", "network", "user", "filesystem", "limits"}
    if os.geteuid() == 0:
        assert report["user"].startswith(f"uid {FIRST_ID}")
    full = report["user"].startswith("uid") and report["network"].startswith("namespace")
    if full:
        assert (report["mode"], weaknesses()) == ("full", "")
    else:
        assert report["mode"] == "weak" and weaknesses()


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_program_runs_in_its_folder_with_a_minimal_environment(sandbox, method):
    code = (
        "import json, os, sys\n"
        "print(json.dumps([os.getcwd(), dict(os.environ), sys.stdin.read(), os.getuid()]))\n"
        "sys.exit(3)\n"
    )
    result = python(sandbox, code, method=method, env={"EXTRA": "1"}, stdin="input text")
    assert (result.status, result.returncode, result.reason) == ("exited", 3, "exit status 3")
    cwd, env, stdin, uid = json.loads(result.stdout)
    assert cwd == str(sandbox.path)
    assert env.keys() == {"PATH", "HOME", "TMPDIR", "LANG", "EXTRA"}
    assert env["HOME"] == env["TMPDIR"] == str(sandbox.path)
    assert stdin == "input text"
    if isolation()["user"].startswith("uid"):
        assert uid == FIRST_ID + SLOT


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_stdin_defaults_to_dev_null(sandbox, method):
    result = python(sandbox, "import sys; print(repr(sys.stdin.read()))", method=method)
    assert result.stdout == "''\n"


def test_write_gives_the_file_to_the_sandbox_user(sandbox):
    path = sandbox.write("pkg/module.py", "VALUE = 42\n")
    assert path == sandbox.path / "pkg" / "module.py"
    assert path.stat().st_uid == sandbox.path.stat().st_uid
    result = sandbox.run([PYTHON, "-c", "from pkg.module import VALUE; print(VALUE)"], QUICK)
    assert result.stdout == "42\n"
    with pytest.raises(ZenCoderError, match="relative path inside"):
        sandbox.write("../escape.py", "")
    assert not (sandbox.path.parent / "escape.py").exists()


def test_missing_program_is_an_error(sandbox):
    with pytest.raises(ZenCoderError, match="cannot run no-such-compiler"):
        sandbox.run(["no-such-compiler", "x.c"], QUICK)
    sandbox.write("main.py", "pass")
    with pytest.raises(ZenCoderError, match="cannot run /no/such/python"):
        sandbox.run_python("main.py", QUICK, python="/no/such/python")


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_a_failed_setup_is_an_error(own_uid, no_network, tmp_path, method):
    """A folder the program must see went missing: its mount fails before the program starts."""
    tool = tmp_path / "tool"
    tool.mkdir()
    with Sandbox(SLOT, readable=[tool]) as box:
        tool.rmdir()
        with pytest.raises(ZenCoderError, match="sandbox cannot start"):
            python(box, "print('started')", method=method)


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_infinite_loop_times_out_and_is_killed(sandbox, method):
    code = "import os; print(os.getpid(), flush=True)\nwhile True: pass"
    result = python(sandbox, code, Limits(wall_seconds=1.0), method)  # the default CPU limit
    assert (result.status, result.returncode) == ("timeout", None)
    assert result.reason == "timed out after 1.0 s"
    assert 1.0 <= result.seconds < 3.0
    assert not alive(int(result.stdout))


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_cpu_limit_kills_with_sigxcpu(sandbox, method):
    result = python(sandbox, "while True: pass", Limits(wall_seconds=10.0, cpu_seconds=1), method)
    assert (result.status, result.returncode) == ("signal", -signal.SIGXCPU)
    assert result.reason == "killed by SIGXCPU (CPU time limit)"


PYTHON_FORK_BOMB = "import os\nwhile True: os.fork()"
FORK_BOMBS = {
    "python": [PYTHON, "-c", PYTHON_FORK_BOMB],
    "shell": ["sh", "-c", "bomb() { bomb | bomb & }; bomb; wait"],
}


@pytest.mark.parametrize("kind", [*FORK_BOMBS, "run_python"])
def test_fork_bomb_is_contained(sandbox, own_uid, kind):
    limits = Limits(wall_seconds=3.0, processes=32)
    start = time.monotonic()
    if kind == "run_python":
        result = python(sandbox, PYTHON_FORK_BOMB, limits, "run_python")
    else:
        result = sandbox.run(FORK_BOMBS[kind], limits)
    assert time.monotonic() - start < limits.wall_seconds + 3
    if kind != "shell":  # the shell's bomb backgrounds itself: its own exit status means nothing
        assert result.returncode != 0, result
    assert live_processes(own_uid) == []
    assert host_forks_fine()


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_memory_bomb_fails_alone(sandbox, method):
    code = "blocks = []\nwhile True: blocks.append(bytearray(32 << 20))"
    result = python(sandbox, code, Limits(wall_seconds=10.0, memory_bytes=512 << 20), method)
    assert result.status == "signal" or "MemoryError" in result.stderr
    assert result.returncode != 0
    assert len(bytearray(256 << 20)) == 256 << 20  # the host still has its memory


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_no_network(sandbox, no_network, method):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 80), ('8.8.8.8', 53)]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=2).close()\n"
            "        print('connected')\n"
            "    except OSError as error:\n"
            "        print(type(error).__name__)\n"
        )
        result = python(sandbox, code, method=method)
        assert result.status == "exited" and result.returncode == 0, result.stderr
        assert "connected" not in result.stdout
        assert len(result.stdout.split()) == 3
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody knocked
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the server works


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_cannot_write_outside_its_folder(sandbox, own_uid, tmp_path, method):
    name = f"zen-coder-sandbox-escape-{uuid.uuid4().hex}"
    targets = [tmp_path / name, Path.cwd() / name, Path("/tmp") / name, Path("/var/tmp") / name]
    code = (
        f"for target in {list(map(str, targets))!r}:\n"
        "    try:\n"
        "        open(target, 'w').write('escaped')\n"
        "        print('wrote', target)\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__, target)\n"
    )
    result = python(sandbox, code, method=method)
    assert result.returncode == 0, result.stderr
    for target in targets:
        assert not target.exists(), result.stdout
    assert not Path(sandbox.path, name).exists()


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_cannot_delete_files_in_the_home_folder(sandbox, own_uid, method):
    precious = Path.home() / f".zen-coder-sandbox-test-{uuid.uuid4().hex}"
    precious.write_text("keep me")
    try:
        code = (
            "import os\n"
            "for attack in (os.remove, lambda p: os.rename(p, p + '.gone'),"
            " lambda p: open(p, 'w').close()):\n"
            "    try:\n"
            f"        attack({str(precious)!r})\n"
            "    except OSError as error:\n"
            "        print(type(error).__name__)\n"
        )
        result = python(sandbox, code, method=method)
        assert result.returncode == 0, result.stderr
        assert precious.read_text() == "keep me"
    finally:
        precious.unlink()


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_cannot_kill_the_harness(sandbox, own_uid, method):
    """Nor, through `run_python`, the server: the parent it sees."""
    code = (
        "import os, signal\n"
        "print(os.getppid())\n"
        f"for pid, number in [(os.getppid(), signal.SIGKILL), ({os.getpid()}, signal.SIGTERM),"
        " (1, signal.SIGKILL)]:\n"
        "    try:\n"
        "        os.kill(pid, number)\n"
        "        print('killed', pid)\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__)\n"
    )
    result = python(sandbox, code, method=method)
    parent = os.getpid() if method == "run" else server_pid(SLOT)
    assert result.stdout.split() == [str(parent), *["PermissionError"] * 3]
    assert alive(os.getpid()) and alive(parent)


@pytest.mark.parametrize("method", PYTHON_RUNS)
@pytest.mark.parametrize("keeps_output_open", [False, True])
def test_daemonized_grandchild_is_killed(sandbox, own_uid, keeps_output_open, method):
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
        f"        if {not keeps_output_open}:\n"
        "            for fd in (0, 1, 2):\n"
        "                os.dup2(os.open(os.devnull, os.O_RDWR), fd)\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "time.sleep(0.2)\n"
    )
    result = python(sandbox, code, Limits(wall_seconds=30.0), method)
    assert (result.status, result.returncode) == ("exited", 0)
    assert result.seconds < 5
    assert not alive(int(result.stdout))
    assert live_processes(own_uid) == []


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_pipe_held_open_by_a_grandchild_does_not_hang(sandbox, method):
    code = "import subprocess\nsubprocess.Popen(['sleep', '30'], start_new_session=True)"
    start = time.monotonic()
    result = python(sandbox, code, Limits(wall_seconds=30.0), method)
    assert (result.status, result.returncode) == ("exited", 0)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_huge_output_is_truncated(sandbox, method):
    code = "import sys\nsys.stdout.write('o' * 10_000_000)\nsys.stderr.write('e' * 10_000_000)"
    result = python(sandbox, code, Limits(wall_seconds=10.0, output_bytes=1000), method)
    assert (result.status, result.returncode) == ("exited", 0)
    assert (result.stdout, result.stderr) == ("o" * 1000, "e" * 1000)


def test_file_size_bomb_is_stopped(sandbox):
    limits = Limits(file_bytes=1 << 20)
    result = sandbox.run(["dd", "if=/dev/zero", "of=big", "bs=64k", "count=64"], limits)
    assert (result.status, result.reason) == ("signal", "killed by SIGXFSZ (file size limit)")
    assert (sandbox.path / "big").stat().st_size == 1 << 20


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_file_size_bomb_fails_in_python(sandbox, method):
    """Python ignores SIGXFSZ: its write fails instead."""
    limits = Limits(file_bytes=1 << 20)
    result = python(sandbox, "open('big.bin', 'wb').write(bytes(4 << 20))", limits, method)
    assert result.returncode == 1 and "File too large" in result.stderr
    assert (sandbox.path / "big.bin").stat().st_size == 1 << 20


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_private_folders_stay_hidden_but_needed_ones_show(own_uid, tmp_path, method):
    """The sandbox may live in a private folder (pytest's tmp_path is 0700), and a toolchain in
    root's home is readable when named, read-only, while the rest of that home stays hidden."""
    base = Path.home() / f".zen-coder-sandbox-test-{uuid.uuid4().hex}"
    tool, secret = base / "tool", base / "secret.txt"
    tool.mkdir(parents=True)
    try:
        (tool / "version.txt").write_text("1.0")
        secret.write_text("secret")
        for path in (base, tool, tool / "version.txt", secret):
            path.chmod(0o755)  # readable by all: only the private home above hides them
        code = (
            "import json, os\n"
            f"tool, secret = {str(tool)!r}, {str(secret)!r}\n"
            "def attempt(action):\n"
            "    try:\n"
            "        return action()\n"
            "    except OSError as error:\n"
            "        return type(error).__name__\n"
            "print(json.dumps({\n"
            "    'version': attempt(lambda: open(os.path.join(tool, 'version.txt')).read()),\n"
            "    'write': attempt(lambda: open(os.path.join(tool, 'new'), 'w') and 'allowed'),\n"
            "    'secret': attempt(lambda: open(secret).read()),\n"
            "    'base': attempt(lambda: sorted(os.listdir(os.path.dirname(secret)))),\n"
            "}))\n"
        )
        with Sandbox(SLOT, parent=tmp_path, readable=[tool]) as box:
            assert box.path.parent == tmp_path
            result = python(box, code, method=method)
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen == {
            "version": "1.0",
            "write": "OSError",  # a read-only file system
            "secret": "FileNotFoundError",
            "base": ["tool"],
        }
        assert not (tool / "new").exists()
    finally:
        for path in (tool / "version.txt", tool, secret, base):
            path.unlink() if path.is_file() else path.rmdir()


def test_one_slot_at_a_time(sandbox):
    with pytest.raises(ZenCoderError, match=f"slot {SLOT} is already in use"):
        Sandbox(SLOT)


def test_a_slot_held_by_another_process_is_waited_for():
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLD_SLOT, str(SLOT + 5)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        start = time.monotonic()
        with Sandbox(SLOT + 5) as box:
            waited = time.monotonic() - start
            assert python(box, "print('mine')").stdout == "mine\n"
        assert waited > 0.5  # the holder keeps the slot for 1 s
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


HOLD_SLOT = (
    "import sys, time\n"
    "from zen_coder.evaluation.sandbox import Sandbox\n"
    "with Sandbox(int(sys.argv[1])):\n"
    "    print('holding', flush=True)\n"
    "    time.sleep(1)\n"
)


def test_folder_is_deleted_on_exit():
    with Sandbox(SLOT) as box:
        box.write("a.txt", "a")
        path = box.path
    assert not path.exists()


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_parallel_sandboxes_do_not_interfere(own_uid, method):
    """Three slots sleep and read their own file while a fourth kills every process it may."""
    slots = [SLOT + 1, SLOT + 2, SLOT + 3]
    results = {}

    def run(slot: int) -> None:
        with Sandbox(slot) as box:
            box.write("id.txt", str(slot))
            code = "import time; time.sleep(1); print(open('id.txt').read())"
            results[slot] = python(box, code, method=method)

    def hostile() -> None:
        with Sandbox(SLOT + 4) as box:
            code = "import os, signal, time; time.sleep(0.3); os.kill(-1, signal.SIGKILL)"
            results["hostile"] = python(box, code, method=method)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in slots]
    threads.append(threading.Thread(target=hostile))
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start < 1.0 * len(slots)  # they ran side by side
    assert results["hostile"].returncode == 0  # kill(-1) spares the caller, and only the caller
    for slot in slots:
        assert (results[slot].returncode, results[slot].stdout) == (0, f"{slot}\n")


# `run_python`: each program is a fork of the slot's warm interpreter, which must look to it
# exactly like a new `python -I script`, and leave nothing to the next program.

SAME_AS_A_NEW_INTERPRETER = {
    "exit status": "import sys; sys.exit(3)",
    "exit without a status": "raise SystemExit",
    "exit with a message": "import sys; sys.exit('bye')",
    "exit status modulo 256": "raise SystemExit(300)",
    "negative exit status": "import sys; sys.exit(-1)",
    "exit with a tuple": "raise SystemExit(1, 2)",
    "os._exit skips the flush": "import os; print('lost', end=''); os._exit(7)",
    "uncaught exception": "def f():\n    return 1 / 0\nprint('before')\nf()\n",
    "chained exceptions": "try:\n    {}['k']\nexcept KeyError:\n    raise ValueError('v')\n",
    "syntax error": "x = 1\ndef (\n",
    "null byte": "x = 1\ny = \0\n",
    "keyboard interrupt": "print('partial', end='')\nraise KeyboardInterrupt",
    "segmentation fault": "import ctypes; ctypes.string_at(0)",
    "identity": (
        "import os, sys\n"
        "print(sys.argv, __name__, __file__, os.getcwd(), sys.orig_argv, sys.executable)\n"
        "print(sorted(globals()), __loader__.name, __loader__.path, __spec__, __package__)\n"
        "print(sys.path, sys.flags, dict(os.environ), oct(os.umask(0)), os.getuid())\n"
    ),
    "modules": "import sys; print(sorted(sys.modules))",
    "import caches": "import sys; print(sorted(sys.path_importer_cache))",
    "stdio": (
        "import sys\n"
        "for file in (sys.stdin, sys.stdout, sys.stderr):\n"
        "    print(file.encoding, file.errors, file.line_buffering, file.seekable())\n"
        "print(repr(sys.stdin.read()))\n"
    ),
    "signals and files": (
        "import os, signal\n"
        "numbers = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)\n"
        "print([signal.getsignal(number) for number in numbers], os.listdir('/proc/self/fd'))\n"
    ),
    "threads and atexit": (
        "import atexit, sys, threading, time\n"
        "atexit.register(print, 'atexit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"
        "sys.exit(2)\n"
    ),
    "a file left open is flushed": "log = open('written.txt', 'w')\nlog.write('buffered')\n",
    "finalizers run": (
        "class Noisy:\n"
        "    def __del__(self):\n"
        "        print('finalized', flush=True)\n"
        "kept = Noisy()\n"
        "cycle = Noisy()\n"
        "cycle.itself = cycle\n"
    ),
    "stdout that cannot be flushed": "import os\nprint('x')\nos.close(1)\n",
    "error in an atexit function": "import atexit, sys\natexit.register(lambda: 1 / 0)\nexit(4)",
    "private temp folders": "import os; print(os.listdir('/tmp'), os.listdir('/dev/shm'))",
    "fork": "import os\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\nprint('after', pid == 0)",
    "multiprocessing": (
        "import multiprocessing\n"
        "if __name__ == '__main__':\n"
        "    with multiprocessing.Pool(2) as pool:\n"
        "        print(pool.map(abs, [-1, -2]))\n"
    ),
    "missing script": None,
}


def outcome(sandbox: Sandbox, method: str, script: str) -> tuple:
    """What a program shows of itself: how it ended, its output (object addresses aside) and the
    file it wrote."""
    if method == "run":
        result = sandbox.run([PYTHON, *PYTHON_FLAGS, script], QUICK, stdin="input")
    else:
        result = sandbox.run_python(script, QUICK, stdin="input")
    written = sandbox.path / "written.txt"
    text = written.read_text() if written.exists() else None
    written.unlink(missing_ok=True)
    stdout, stderr = (re.sub(r"0x[0-9a-f]+", "0x?", out) for out in (result.stdout, result.stderr))
    return result.status, result.returncode, stdout, stderr, text


@pytest.mark.parametrize("case", SAME_AS_A_NEW_INTERPRETER)
def test_run_python_is_a_new_interpreter(sandbox, case):
    code = SAME_AS_A_NEW_INTERPRETER[case]
    if code is not None:
        sandbox.write("main.py", code)
    script = "main.py" if code is not None else "absent.py"
    assert outcome(sandbox, "run_python", script) == outcome(sandbox, "run", script)


@pytest.mark.parametrize("method", PYTHON_RUNS)
def test_the_sandbox_code_is_out_of_reach(sandbox, method):
    """The setup and the server run by their paths: their folder is on no program's sys.path."""
    code = (
        "import sys\n"
        "for name in ('sandbox_setup', 'warm_python'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "        print('imported', name)\n"
        "    except ImportError as error:\n"
        "        print(type(error).__name__)\n"
        "print([entry for entry in sys.path if entry.endswith('evaluation')])\n"
    )
    result = python(sandbox, code, method=method)
    assert result.stdout == "ModuleNotFoundError\nModuleNotFoundError\n[]\n", result.stderr


def test_run_python_runs_one_frame_deeper(sandbox):
    """The server's module frame stays under the program's: recursion ends one call earlier."""
    code = (
        "def depth(n):\n"
        "    try:\n"
        "        return depth(n + 1)\n"
        "    except RecursionError:\n"
        "        return n\n"
        "print(depth(0))\n"
    )
    sandbox.write("main.py", code)
    fresh = sandbox.run([PYTHON, *PYTHON_FLAGS, "main.py"], QUICK)
    forked = sandbox.run_python("main.py", QUICK)
    assert int(forked.stdout) == int(fresh.stdout) - 1


def test_nothing_of_a_program_reaches_the_next(sandbox):
    first = (
        "import builtins, json, os, sys\n"
        "builtins.LEAKED = json.dumps = None\n"
        "os.environ['LEAKED'] = '1'\n"
        "sys.path.append('/leaked')\n"
        "open('/tmp/leaked', 'w').close()\n"
        "GLOBAL = 1\n"
    )
    assert python(sandbox, first, method="run_python").returncode == 0
    second = (
        "import builtins, json, os, sys\n"
        "print(hasattr(builtins, 'LEAKED'), 'GLOBAL' in globals(), json.dumps([1]),"
        " 'LEAKED' in os.environ, '/leaked' in sys.path, os.path.exists('/tmp/leaked'))\n"
    )
    result = python(sandbox, second, method="run_python")
    assert result.stdout == "False False [1] False False False\n", result.stderr


def test_random_numbers_differ_between_programs(sandbox):
    code = "import random; print(random.random())"
    assert len({python(sandbox, code, method="run_python").stdout for _ in range(3)}) == 3


def test_the_server_outlives_a_hostile_program(sandbox, own_uid):
    code = (
        "import os, signal\n"
        "print(os.getppid(), flush=True)\n"
        "for target in (os.getppid(), -1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__)\n"
    )
    result = python(sandbox, code, method="run_python")
    server = int(result.stdout.split()[0])
    assert result.stdout.split()[1] == "PermissionError"
    assert alive(server)
    assert python(sandbox, "import os; print(os.getppid())", method="run_python").stdout == (
        f"{server}\n"
    )


def test_a_killed_server_is_replaced(sandbox, own_uid):
    assert python(sandbox, "print(1)", method="run_python").stdout == "1\n"
    first = server_pid(SLOT)
    os.kill(first, signal.SIGKILL)
    assert python(sandbox, "print(2)", method="run_python").stdout == "2\n"
    assert server_pid(SLOT) != first


def test_a_server_dying_mid_run_is_an_error(sandbox, own_uid):
    python(sandbox, "pass", method="run_python")
    threading.Timer(0.5, os.kill, (server_pid(SLOT), signal.SIGKILL)).start()
    with pytest.raises(ZenCoderError, match="Python server stopped"):
        python(sandbox, "import time; time.sleep(10)", method="run_python")
    deadline = time.monotonic() + 2
    while live_processes(own_uid) and time.monotonic() < deadline:
        time.sleep(0.05)  # its program dies with it, by its parent-death signal
    assert live_processes(own_uid) == []
    assert python(sandbox, "print('next')", method="run_python").stdout == "next\n"


def test_threads_sharing_a_sandbox_take_turns(sandbox):
    for index in range(4):
        sandbox.write(f"p{index}.py", f"import time; time.sleep(0.1); print({index})")
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda i: sandbox.run_python(f"p{i}.py", QUICK).stdout, range(4)))
    assert outputs == [f"{index}\n" for index in range(4)]


def test_a_forked_host_starts_its_own_server(own_uid):
    slot = SLOT + 6
    with Sandbox(slot) as box:
        assert python(box, "print('parent')", method="run_python").stdout == "parent\n"
    parent_server = server_pid(slot)
    pid = os.fork()
    if pid == 0:  # the child must not talk to its parent's server
        status = 1
        try:
            with Sandbox(slot) as box:
                if python(box, "print('child')", method="run_python").stdout == "child\n":
                    status = 0 if server_pid(slot) != parent_server else 2
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with Sandbox(slot) as box:
        assert python(box, "print('again')", method="run_python").stdout == "again\n"
    assert server_pid(slot) == parent_server


HOST_WITH_A_SERVER = (
    "import sys, time\n"
    "from zen_coder.evaluation import sandbox\n"
    "with sandbox.Sandbox(int(sys.argv[1])) as box:\n"
    "    box.write('main.py', 'pass')\n"
    "    box.run_python('main.py', sandbox.Limits())\n"
    "print(sandbox._SERVERS[int(sys.argv[1])]._process.pid, flush=True)\n"
    "if sys.argv[2] == 'stays':\n"
    "    time.sleep(60)\n"
)


@pytest.mark.parametrize("end", ["exits", "is killed"])
def test_servers_end_with_their_host(own_uid, end):
    with subprocess.Popen(
        [PYTHON, "-c", HOST_WITH_A_SERVER, str(SLOT + 7), "stays" if end == "is killed" else ""],
        stdout=subprocess.PIPE,
        text=True,
    ) as host:
        server = int(host.stdout.readline())
        if end == "is killed":
            host.kill()
    deadline = time.monotonic() + 5
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server)


def test_run_python_takes_another_interpreter(sandbox, own_uid):
    other = "/usr/bin/python3"
    if not os.access(other, os.X_OK) or Path(other).resolve() == Path(PYTHON).resolve():
        pytest.skip("no second Python interpreter here")
    code = "import sys; print(sys.executable, sys.version, sys.path)"
    sandbox.write("main.py", code)
    fresh = sandbox.run([other, *PYTHON_FLAGS, "main.py"], QUICK)
    assert sandbox.run_python("main.py", QUICK, python=other).stdout == fresh.stdout
    assert sandbox.run_python("main.py", QUICK).stdout.startswith(PYTHON)
