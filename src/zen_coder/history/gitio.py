"""Reading a repository through long-lived git processes.

Measured on a 20,000-commit repository (benchmarks/traversal_choice.py): `git cat-file --batch`
streams every blob a history walk needs about 5x faster than libgit2 (pygit2) reads them, and
`git log --raw` lists every commit's changed files in a fraction of a second. So the miner walks the
history with one `git log --raw` stream, reads sizes and contents through one `git cat-file
--batch-check` and one `git cat-file --batch` per worker, and never starts a git process per commit.
"""

from __future__ import annotations

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
    before the next chunk is written, so neither side can block the other.
    """

    CHUNK = 256

    def __init__(self, git_dir: str | Path) -> None:
        self.git_dir = str(git_dir)
        self._check = self._start("--batch-check")
        self._batch = self._start("--batch")

    def _start(self, mode: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["git", f"--git-dir={self.git_dir}", "cat-file", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    @staticmethod
    def _request(process: subprocess.Popen, oids: list[str]) -> None:
        process.stdin.write(("\n".join(oids) + "\n").encode())
        process.stdin.flush()

    def sizes(self, oids: list[str]) -> dict[str, int | None]:
        """Size of each blob in bytes, None for an object the repository lacks."""
        result: dict[str, int | None] = {}
        for start in range(0, len(oids), self.CHUNK):
            chunk = oids[start : start + self.CHUNK]
            self._request(self._check, chunk)
            for oid in chunk:
                parts = self._check.stdout.readline().split()
                result[oid] = int(parts[2]) if len(parts) == 3 and parts[1] == b"blob" else None
        return result

    def contents(self, oids: list[str]) -> dict[str, bytes | None]:
        """Content of each blob, None for an object the repository lacks."""
        result: dict[str, bytes | None] = {}
        out = self._batch.stdout
        for start in range(0, len(oids), self.CHUNK):
            chunk = oids[start : start + self.CHUNK]
            self._request(self._batch, chunk)
            for oid in chunk:
                parts = out.readline().split()
                if len(parts) == 3:
                    size = int(parts[2])
                    data = out.read(size + 1)[:size]
                    result[oid] = data if parts[1] == b"blob" else None
                else:
                    result[oid] = None
        return result

    def close(self) -> None:
        for process in (self._check, self._batch):
            process.stdin.close()
            process.wait()
            process.stdout.close()
