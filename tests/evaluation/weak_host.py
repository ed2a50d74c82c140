"""Run a command as an unprivileged user who cannot create user namespaces: the host where the
sandbox is weakest (programs as that same user, the network up), made for real on a host where
we are root, for `zen-coder eval` to meet it.

    python weak_host.py UID -- COMMAND...

The command runs as uid and gid UID, with no groups, in a user namespace of its own where
`user.max_user_namespaces` is 0: unshare(CLONE_NEWUSER) fails with ENOSPC there, as on a host that
forbids user namespaces, and without root nothing else works (CLONE_NEWNET and CLONE_NEWNS need a
user namespace). Only root's uid and UID are mapped into it. A private folder above this Python
(a pyenv under root's home) is covered with an empty tmpfs and the installation bound back,
read-only, in the namespace's own mounts, so that UID can run it; nothing of this reaches the
host. Needs root. Exits with the command's status.
"""

import os
import shutil
import sys
from pathlib import Path

from zen_coder.evaluation.sandbox_setup import (
    CLONE_NEWNS,
    CLONE_NEWUSER,
    arrange_mounts,
    libc_call,
    parse_config,
)


def private_parents(folders: list[Path]) -> list[str]:
    """The topmost folder above each of `folders` that other users cannot enter."""
    blockers = set()
    for folder in folders:
        for parent in reversed(folder.parents[:-1]):
            if not parent.stat().st_mode & 0o001:
                blockers.add(str(parent))
                break
    return sorted(blockers)


def become_weak_user(uid: int, ready: int, go: int) -> None:
    """In the forked child: a new user namespace (mapped by the parent meanwhile) and mount
    namespace, no user namespaces below it, the mounts, then uid `uid` for good."""
    libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNS, what="unshare")
    os.write(ready, b"1")
    if os.read(go, 1) != b"1":
        raise SystemExit("the parent could not map the user namespace")
    with open("/proc/sys/user/max_user_namespaces", "w") as limit:
        limit.write("0")
    python = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    hidden = private_parents(sorted(python))
    if hidden:
        shown = [folder for folder in python if any(folder.is_relative_to(h) for h in hidden)]
        config = [f"hide={folder}" for folder in hidden] + [f"robind={f}" for f in shown]
        arrange_mounts(parse_config([*config, f"tmpfs_bytes={1 << 20}", f"cwd={os.getcwd()}"]))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def main(arguments: list[str]) -> int:
    if os.geteuid() != 0 or arguments[1] != "--":
        raise SystemExit("usage, as root: python weak_host.py UID -- COMMAND...")
    uid, command = int(arguments[0]), arguments[2:]
    executable = shutil.which(command[0])  # now: uid may not read every folder of $PATH
    if executable is None:
        raise SystemExit(f"{command[0]}: not found")
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            become_weak_user(uid, ready_write, go_read)
            os.execv(executable, command)
        except BaseException as error:
            print(f"weak_host: {error}", file=sys.stderr)
        finally:
            os._exit(127)
    try:
        if os.read(ready_read, 1) == b"1":
            for name in ("uid_map", "gid_map"):  # as root outside: two ids, and no `setgroups`
                Path(f"/proc/{pid}/{name}").write_text(f"0 0 1\n{uid} {uid} 1\n")
            os.write(go_write, b"1")
    finally:
        os.close(go_write)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
