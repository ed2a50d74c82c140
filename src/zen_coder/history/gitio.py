"""Reading a repository through long-lived git processes.

Measured on a 20,000-commit repository (benchmarks/traversal_choice.py): `git cat-file --batch`
streams every blob a history walk needs about 5x faster than libgit2 (pygit2) reads them, and
`git log --raw` lists every commit's changed files in a fraction of a second. So the miner walks the
history with one `git log --raw` stream, reads sizes and contents through one `git cat-file
--batch-check` and one `git cat-file --batch` per worker, and never starts a git process per commit.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zen_coder.errors import ZenCoderError

ZERO_OID = "0" * 40
MODE_SYMLINK = 0o120000
MODE_GITLINK = 0o160000

# Commit fields, NUL-separated; \x01 marks the start of each commit. %aN/%aE apply .mailmap.
LOG_FORMAT = "%x01%H%x00%P%x00%at%x00%ct%x00%aN%x00%aE%x00%B"
HEADER_FIELDS = 7


@dataclass(frozen=True, slots=True)
class RawChange:
    """One changed file of a commit, as `git log --raw -M` reports it (no contents)."""

    status: str  # A (add), M (modify), D (delete), R (rename), T (type change)
    old_mode: int
    new_mode: int
    old_oid: str
    new_oid: str
    old_path: str | None
    path: str


@dataclass(slots=True)
class RawCommit:
    sha: str
    parents: tuple[str, ...]
    author_time: int
    committer_time: int
    author_name: str
    author_email: str
    message: bytes
    changes: list[RawChange] = field(default_factory=list)


def git(git_dir: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one short git command against a repository and capture its output."""
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        capture_output=True,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def _decode_path(raw: bytes) -> str:
    # Git paths are bytes; an undecodable one survives as lone surrogates, which the extractor
    # detects and counts instead of failing.
    return raw.decode("utf-8", errors="surrogateescape")


def _tokens(stream, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """NUL-separated tokens of a stream, read in large chunks."""
    pending = b""
    while chunk := stream.read(chunk_size):
        parts = (pending + chunk).split(b"\0")
        pending = parts.pop()
        yield from parts
    if pending:
        yield pending


def _parse_raw(token: bytes, tokens: Iterator[bytes]) -> RawChange:
    # ":old_mode new_mode old_oid new_oid STATUS" then one path, or two for renames and copies.
    old_mode, new_mode, old_oid, new_oid, status = token.lstrip(b"\n:").split(b" ")
    kind = status[:1].decode()
    first = _decode_path(next(tokens))
    if kind in ("R", "C"):
        path = _decode_path(next(tokens))
        old_path: str | None = first
    else:
        path = first
        old_path = None if kind == "A" else first
    return RawChange(
        status=kind,
        old_mode=int(old_mode, 8),
        new_mode=int(new_mode, 8),
        old_oid=old_oid.decode(),
        new_oid=new_oid.decode(),
        old_path=old_path,
        path=path,
    )


def parse_log(stream) -> Iterator[RawCommit]:
    """Parse `git log -z --raw --format=LOG_FORMAT` output into commits, streaming."""
    tokens = _tokens(stream)
    commit: RawCommit | None = None
    for token in tokens:
        if token.startswith(b"\x01"):
            if commit is not None:
                yield commit
            header = [token[1:]] + [next(tokens) for _ in range(HEADER_FIELDS - 1)]
            sha, parents, atime, ctime, name, email, message = header
            commit = RawCommit(
                sha=sha.decode(),
                parents=tuple(p.decode() for p in parents.split()),
                author_time=int(atime),
                committer_time=int(ctime),
                author_name=name.decode("utf-8", errors="replace"),
                author_email=email.decode("utf-8", errors="replace"),
                message=message,
            )
        elif token.lstrip(b"\n").startswith(b":") and commit is not None:
            commit.changes.append(_parse_raw(token, tokens))
    if commit is not None:
        yield commit


class LogStream:
    """One `git log` process listing a revision's commits oldest first with their changed files.

    Rename detection (`-M`) runs inside git; `rename_limit` bounds it, so a commit touching
    thousands of files falls back to exact renames instead of a quadratic search.
    """

    def __init__(self, git_dir: str | Path, revision: str, rename_limit: int) -> None:
        command = [
            "git",
            f"--git-dir={git_dir}",
            "-c",
            "log.showSignature=false",
            "-c",
            f"diff.renameLimit={rename_limit}",
            "log",
            "--reverse",
            "--topo-order",
            "--root",
            "--raw",
            "-z",
            "--no-abbrev",
            "-M",
            "--no-color",
            f"--format={LOG_FORMAT}",
            revision,
            "--",
        ]
        # A file, not a pipe, for stderr: warnings git prints mid-walk can never block it.
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self.errors, stdin=subprocess.DEVNULL
        )

    def __iter__(self) -> Iterator[RawCommit]:
        yield from parse_log(self.process.stdout)
        if self.process.wait() != 0:
            self.errors.seek(0)
            lines = self.errors.read().decode(errors="replace").strip().splitlines()
            raise ZenCoderError(f"git log failed: {lines[-1] if lines else 'no output'}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self.errors.close()


class BlobReader:
    """Object sizes and contents through `git cat-file --batch-check` and `--batch`.

    Requests go in chunks small enough to fit the pipe buffer, and every response of a chunk is read
    before the next chunk is written, so neither side can block the other. A corrupt object can
    make git die halfway through its content: that object reads as None (unreadable), the process
    is restarted, and the rest of the chunk is asked again.
    """

    CHUNK = 256

    def __init__(self, git_dir: str | Path) -> None:
        self.git_dir = str(git_dir)
        self._processes: dict[str, subprocess.Popen] = {}

    def _process(self, mode: str) -> subprocess.Popen:
        process = self._processes.get(mode)
        if process is None or process.poll() is not None:
            if process is not None:
                self._stop(process)
            process = subprocess.Popen(
                ["git", f"--git-dir={self.git_dir}", "cat-file", mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self._processes[mode] = process
        return process

    def _ask(self, mode: str, oids: list[str], read_one) -> dict:
        """Send `oids` to the `mode` process and read one answer each with `read_one`."""
        result: dict = {}
        pending = list(oids)
        failures = 0
        while pending:
            chunk = pending[: self.CHUNK]
            process = self._process(mode)
            try:
                process.stdin.write(("\n".join(chunk) + "\n").encode())
                process.stdin.flush()
            except BrokenPipeError:
                self._discard(mode)
                failures += 1
                if failures > 2:
                    raise ZenCoderError(
                        f"{self.git_dir}: git cat-file keeps failing; check the repository"
                    ) from None
                continue
            failures = 0
            for oid in chunk:
                answer = read_one(process.stdout)
                result[oid] = None if answer is _DIED else answer
                pending.pop(0)
                if answer is _DIED:
                    self._discard(mode)
                    break
        return result

    def sizes(self, oids: list[str]) -> dict[str, int | None]:
        """Size of each blob in bytes; None for an object that is missing or unreadable."""
        return self._ask("--batch-check", oids, _read_size)

    def contents(self, oids: list[str]) -> dict[str, bytes | None]:
        """Content of each blob; None for an object that is missing or unreadable."""
        return self._ask("--batch", oids, _read_content)

    def _discard(self, mode: str) -> None:
        """End a process that died mid-answer and forget it, so the next request starts a new
        one: killed but not yet reaped, it would still look alive and answer nothing."""
        process = self._processes.pop(mode)
        process.kill()
        self._stop(process)

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        with contextlib.suppress(BrokenPipeError):  # unflushed requests to a dead process
            process.stdin.close()
        process.wait()
        process.stdout.close()

    def close(self) -> None:
        for process in self._processes.values():
            self._stop(process)
        self._processes.clear()


_DIED = object()


def _read_size(stream) -> int | object | None:
    header = stream.readline()
    if not header.endswith(b"\n"):
        return _DIED
    parts = header.split()
    return int(parts[2]) if len(parts) == 3 and parts[1] == b"blob" else None


def _read_content(stream) -> bytes | object | None:
    header = stream.readline()
    if not header.endswith(b"\n"):
        return _DIED
    parts = header.split()
    if len(parts) != 3:
        return None  # "<oid> missing"
    size = int(parts[2])
    data = stream.read(size + 1)
    if len(data) != size + 1:
        return _DIED
    return data[:size] if parts[1] == b"blob" else None
