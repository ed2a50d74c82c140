"""The steps that isolate one command, run in a fresh interpreter that then execs the command.

`sandbox.py` runs this file by its path, in a new interpreter:

    python -I -S sandbox_setup.py exec STATUS_FD KEY=VALUE... -- COMMAND...
    python -I -S sandbox_setup.py kill UID GID

`exec` enters namespaces, arranges the mounts, sets resource limits, takes the sandbox's uid and
execs COMMAND in the working directory `cwd`. A failure is written to STATUS_FD, which closes on
exec: the host reads an empty status once the command started. `kill` takes UID and GID and
kills every process of that uid but itself (`kill(-1)` reaches all of them at once). The warm
Python server (`warm_python.py`) imports these steps to apply them in each fork.

Settings come as KEY=VALUE items, a key given once or repeated (`parse_config`). This is not a
`preexec_fn`: the host runs sandboxes from threads, where Python code between fork and exec is
unsafe. It runs in the interpreter of the programs too (the warm server imports it), which may
be any Python from 3.9 on, so it uses nothing newer and nothing outside the standard library
(annotations that 3.9 cannot evaluate are quoted), and imports little, to start fast: `-S` skips
site-packages.
"""

import _signal
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
LIMITS = ("cpu", "as", "fsize", "nproc")  # the rlimits a config sets, each as SOFT:HARD

_LIBC = []  # the C library, once `load_libc` has loaded it


def load_libc() -> None:
    """Load the C library through ctypes, on first use only: `kill` needs none of it, and the
    import would double the time `kill` takes to start. Load it before taking the sandbox's uid,
    which may not be allowed to read the standard library."""
    if not _LIBC:
        import ctypes

        library = ctypes.CDLL(None, use_errno=True)
        library.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        _LIBC.append((library, ctypes.get_errno))


def libc_call(function: str, *arguments: object, what: str) -> None:
    """Call the C library's `function`; when it returns non-zero, raise OSError with errno's
    message and `what` failed."""
    load_libc()
    library, get_errno = _LIBC[0]
    if getattr(library, function)(*arguments) != 0:
        error = get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(
    source: "str | None", target: str, kind: "str | None", flags: int, data: "str | None" = None
) -> None:
    encoded = (_encoded(source), _encoded(target), _encoded(kind), flags, _encoded(data))
    libc_call("mount", *encoded, what=f"mount {target}")


def _encoded(text: "str | None") -> "bytes | None":
    return None if text is None else os.fsencode(text)


def enter_namespaces(flags: int) -> None:
    """unshare(2) `flags`; in a new user namespace, be ourselves: allowed without privileges."""
    uid, gid = os.getuid(), os.getgid()
    libc_call("unshare", flags, what="unshare")
    if flags & CLONE_NEWUSER:
        for name, text in [
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ]:
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)


def arrange_mounts(config: dict[str, list[str]]) -> None:
    """In a new mount namespace: cover the `tmp` and `hide` folders with empty tmpfs, then bind
    back, at their own paths, the `bind` (read-write) and `robind` (read-only) folders the command
    needs, and enter `cwd`. Nothing mounted here reaches the host."""
    needed = config.get("bind", []) + config.get("robind", [])
    opened = {path: os.open(path, os.O_PATH) for path in needed}  # before tmpfs hides them
    mount(None, "/", None, MS_REC | MS_PRIVATE)
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


def set_limits(config: dict[str, list[str]]) -> None:
    """The rlimits of `LIMITS` (-1: unlimited), and no core dumps. Without privileges a hard
    limit cannot go up: a wanted value above the current ceiling gets the ceiling."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for key in LIMITS:
        kind = getattr(resource, f"RLIMIT_{key.upper()}")
        wanted = [int(value) for value in config[key][0].split(":")]
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            wanted = [ceiling if value == -1 else min(value, ceiling) for value in wanted]
        resource.setrlimit(kind, tuple(wanted))


def become(uid: int, gid: int) -> None:
    """Take `uid` and `gid` for good (no groups), then kill whatever earlier commands of that uid
    left behind: kill(-1) as that uid reaches all of them but ourselves."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.kill(-1, 9)


def parse_config(items: list[str]) -> dict[str, list[str]]:
    """KEY=VALUE items as {key: [values in order]}; a value may hold "=" itself."""
    config: dict[str, list[str]] = {}
    for item in items:
        key, _, value = item.partition("=")
        config.setdefault(key, []).append(value)
    return config


def environment(config: dict[str, list[str]]) -> dict[str, str]:
    """The command's environment: the `env` items, each NAME=VALUE."""
    return dict(item.partition("=")[::2] for item in config.get("env", []))


def find_executable(name: str, path: str) -> str:
    """Where `name` is in the folders of `path` ($PATH), as exec would look. os.execvpe would
    import a module, which the sandbox user may not be able to read."""
    if "/" in name:
        return name
    for folder in path.split(":"):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OSError(2, "not found in PATH")


def setup_and_exec(config: dict[str, list[str]], command: list[str]) -> None:
    """Isolate this process as `config` says, then become `command`. `uid` -1 keeps ours;
    `deathsig` 0 lets the command outlive the thread that started it."""
    flags, uid, gid = (int(config[key][0]) for key in ("unshare", "uid", "gid"))
    load_libc()
    if flags:
        enter_namespaces(flags)
    if flags & CLONE_NEWNS:
        arrange_mounts(config)
    set_limits(config)
    if uid >= 0:
        become(uid, gid)
    libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="no new privileges")
    death_signal = int(config.get("deathsig", ["9"])[0])
    libc_call("prctl", PR_SET_PDEATHSIG, death_signal, 0, 0, 0, what="parent death signal")
    for number in (_signal.SIGPIPE, _signal.SIGXFSZ):  # Python ignores them, the command must not
        _signal.signal(number, _signal.SIG_DFL)
    env = environment(config)
    try:
        os.execve(find_executable(command[0], env.get("PATH", "")), command, env)
    except OSError as error:
        raise OSError(f"cannot run {command[0]}: {error.strerror}") from None


def main(arguments: list[str]) -> None:
    """`exec STATUS_FD KEY=VALUE... -- COMMAND...` or `kill UID GID`."""
    if arguments[0] == "kill":
        become(int(arguments[1]), int(arguments[2]))
        return
    status = int(arguments[1])
    os.set_inheritable(status, False)
    end = arguments.index("--")
    try:
        setup_and_exec(parse_config(arguments[2:end]), arguments[end + 1 :])
    except Exception as error:
        os.write(status, str(error).encode(errors="replace"))
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
