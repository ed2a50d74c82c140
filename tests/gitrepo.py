"""Build real git repositories for tests, with the `git` command and fixed dates and identities."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HUMAN = ("Ada Lovelace", "ada@example.org")


class GitRepo:
    def __init__(self, path: Path, branch: str = "main", *, create: bool = True) -> None:
        self.path = path
        self.clock = 1_700_000_000
        if create:
            path.mkdir(parents=True, exist_ok=True)
            self.git("init", "-q", "-b", branch)
        self.git("config", "commit.gpgsign", "false")

    @classmethod
    def clone(cls, source: GitRepo, path: Path) -> GitRepo:
        subprocess.run(["git", "clone", "-q", str(source.path), str(path)], check=True)
        repo = cls(path, create=False)
        repo.clock = source.clock
        return repo

    def git(self, *args: str, input: bytes | None = None, env: dict | None = None) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.path,
            input=input,
            capture_output=True,
            check=True,
            env={**os.environ, **(env or {})},
        )
        return result.stdout.decode(errors="replace").strip()

    def write(self, path: str, content: str | bytes) -> None:
        target = self.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        self.git("add", "--", path)

    def remove(self, path: str) -> None:
        self.git("rm", "-q", "--", path)

    def move(self, old: str, new: str) -> None:
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        self.git("mv", old, new)

    def _identity(self, author: tuple[str, str]) -> dict[str, str]:
        self.clock += 3600
        date = f"{self.clock} +0000"
        return {
            "GIT_AUTHOR_NAME": author[0],
            "GIT_AUTHOR_EMAIL": author[1],
            "GIT_COMMITTER_NAME": author[0],
            "GIT_COMMITTER_EMAIL": author[1],
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_DATE": date,
        }

    def commit(self, message: str | bytes, author: tuple[str, str] = HUMAN) -> str:
        """Commit what is staged; the message may be raw bytes (e.g. not UTF-8)."""
        raw = message.encode() if isinstance(message, str) else message
        env = self._identity(author)
        self.git("commit", "-q", "--allow-empty", "-F", "-", input=raw, env=env)
        return self.head()

    def commit_raw(self, message: bytes, author: tuple[str, str] = HUMAN) -> str:
        """Commit with message bytes stored exactly, as `git commit` would re-encode them."""
        env = self._identity(author)
        tree = self.git("write-tree")
        who = f"{author[0]} <{author[1]}> {env['GIT_AUTHOR_DATE']}".encode()
        body = b"tree %s\nparent %s\nauthor %s\ncommitter %s\n\n" % (
            tree.encode(),
            self.head().encode(),
            who,
            who,
        )
        sha = self.git("hash-object", "-t", "commit", "-w", "--stdin", input=body + message)
        self.git("update-ref", "HEAD", sha)
        return sha

    def merge(self, branch: str, message: str, author: tuple[str, str] = HUMAN) -> str:
        self.git("merge", "-q", "--no-ff", "-m", message, branch, env=self._identity(author))
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")
