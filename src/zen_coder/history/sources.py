"""What to mine: local repositories, clone URLs (cached and fetched incrementally) and manifests.

A manifest is a TOML file with one `[[repo]]` table per repository:

    [[repo]]
    source = "https://github.com/org/project.git"   # or a path, relative to the manifest
    name = "org/project"                              # optional: the `repo` field of the records
    branch = "main"                                   # optional: default is the repository's HEAD
    range = "v1.0..main"                              # optional: a revision range instead of branch
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.history.gitio import git
from zen_coder.history.secrets import redact


class EmptyRepository(ZenCoderError):
    """A repository without commits: skipped with a warning, not an error."""


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^[\w.-]+@[\w.-]+:")


@dataclass(frozen=True)
class RepoSpec:
    source: str
    name: str | None = None
    branch: str | None = None
    range: str | None = None

    @property
    def is_url(self) -> bool:
        return bool(_URL.match(self.source))

    @property
    def shown(self) -> str:
        """The source as messages and the manifest show it: credentials in a URL redacted."""
        return redact(self.source, emails=False)[0]

    @property
    def revision(self) -> str:
        return self.range or self.branch or "HEAD"

    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.is_url:
            path = re.sub(r"^[a-z][a-z0-9+.-]*://[^/]*/?|^[\w.-]+@[\w.-]+:", "", self.source)
            parts = [p for p in path.removesuffix("/").removesuffix(".git").split("/") if p]
            return "/".join(parts[-2:]) or self.source
        return Path(self.source).resolve().name


@dataclass(frozen=True)
class Repository:
    """A spec resolved to a local git directory, ready to mine."""

    spec: RepoSpec
    name: str
    git_dir: Path

    @property
    def key(self) -> str:
        """A file-system-safe form of the name, used for shard directories."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.name.replace("/", "__"))


def read_manifest(path: Path) -> list[RepoSpec]:
    entries = read_toml(path, "manifest").get("repo")
    if not isinstance(entries, list) or not entries:
        raise ZenCoderError(f"manifest {path} lists no repositories; add [[repo]] tables")
    specs = []
    for number, entry in enumerate(entries, 1):
        unknown = set(entry) - {"source", "name", "branch", "range"}
        if "source" not in entry or unknown:
            raise ZenCoderError(
                f"manifest {path}, repo #{number}: needs `source` and allows only "
                f"name, branch, range (got {', '.join(sorted(entry))})"
            )
        source = str(entry["source"])
        if not _URL.match(source) and not Path(source).is_absolute():
            source = str((path.parent / source).resolve())
        specs.append(RepoSpec(source, entry.get("name"), entry.get("branch"), entry.get("range")))
    return specs


def _local_git_dir(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise ZenCoderError(f"{source}: no such directory; pass a repository path or a clone URL")
    result = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise ZenCoderError(
            f"{source}: not a git repository; pass the path of a repository or a clone URL"
        )
    return Path(result.stdout.strip())


def _cached_clone(url: str, shown: str, cache_dir: Path) -> Path:
    """Clone `url` once into the cache as a mirror; later calls fetch only what is new."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "repo"
    target = cache_dir / f"{stem}-{digest}.git"
    if target.exists():
        command = ["git", f"--git-dir={target}", "fetch", "--prune", "--quiet", "origin"]
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        command = ["git", "clone", "--mirror", "--quiet", url, str(partial)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},  # fail, don't wait for a password
    )
    if result.returncode != 0:
        reason = redact((result.stderr.strip().splitlines() or ["unknown error"])[-1])[0]
        raise ZenCoderError(f"{shown}: cannot clone or fetch ({reason}); check the URL and access")
    if not target.exists():
        partial.rename(target)
    return target


def resolve(spec: RepoSpec, cache_dir: Path) -> Repository:
    """Find or fetch the repository of `spec`; raise a one-line error if it cannot be mined."""
    if spec.is_url:
        git_dir = _cached_clone(spec.source, spec.shown, cache_dir)
    else:
        git_dir = _local_git_dir(spec.source)
    repo = Repository(spec=spec, name=spec.display_name(), git_dir=git_dir)
    tip = git(git_dir, "rev-parse", "--verify", "--quiet", f"{_tip(repo)}^{{commit}}", check=False)
    if tip.returncode != 0:
        if spec.revision == "HEAD":
            raise EmptyRepository(f"{spec.shown}: repository has no commits; skipped")
        raise ZenCoderError(
            f"{spec.shown}: revision {spec.revision!r} not found; check the branch or range"
        )
    return repo


def shallow_boundary(git_dir: Path) -> set[str]:
    """Commits whose parents a shallow clone lacks: their diffs would show the whole tree added."""
    shallow = git_dir / "shallow"
    return set(shallow.read_text().split()) if shallow.exists() else set()


def root_commits(repo: Repository) -> set[str]:
    out = git(repo.git_dir, "rev-list", "--max-parents=0", _tip(repo)).stdout
    return set(out.decode().split())


def commit_count(repo: Repository) -> int:
    return int(git(repo.git_dir, "rev-list", "--count", repo.spec.revision, "--").stdout)


def all_commits(repo: Repository) -> set[str]:
    return set(git(repo.git_dir, "rev-list", repo.spec.revision, "--").stdout.decode().split())


def _tip(repo: Repository) -> str:
    return repo.spec.revision.split("..")[-1] or "HEAD"
