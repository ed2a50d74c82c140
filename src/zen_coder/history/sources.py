"""What to mine: local repositories, clone URLs (cached and fetched incrementally) and manifests.

A manifest is a TOML file with one `[[repo]]` table per repository:

    [[repo]]
    source = "https://github.com/org/project.git"   # or a path, relative to the manifest
    name = "org/project"                              # optional: the `repo` field of the records
    branch = "main"                                   # optional: default is the repository's HEAD
    range = "v1.0..main"                              # optional: a revision range instead of branch
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from zen_coder.errors import ZenCoderError
from zen_coder.files import install_directory, read_toml, user_cache_dir
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
    """A spec resolved to a local git directory, ready to mine.

    `revision` is the spec's revision with every branch or tag replaced by the commit it named at
    resolution, so whatever mines the repository later, in this process or in a Ray task on
    another machine, walks exactly the commits that were counted and checked for forks.
    """

    spec: RepoSpec
    name: str
    git_dir: Path
    revision: str

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


def local_git_dir(source: str | Path, fix: str = "the path of a repository or a clone URL") -> Path:
    """The git directory of the repository at the path `source`; a one-line error saying to
    pass `fix` where there is none."""
    path = Path(source)
    if not path.exists():
        raise ZenCoderError(f"{source}: no such directory; pass {fix}")
    result = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise ZenCoderError(f"{source}: not a git repository; pass {fix}")
    return Path(result.stdout.strip())


def default_cache_dir() -> Path:
    """Where clone URLs are mirrored unless told otherwise: this machine's user cache."""
    return user_cache_dir() / "repos"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path`, released on exit, even by `kill -9`."""
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _cached_clone(url: str, shown: str, cache_dir: Path, wanted: Sequence[str] = ()) -> Path:
    """Clone `url` once into the cache as a mirror; later calls fetch only what is new.

    A mirror that already holds every commit in `wanted` is used as it is, without asking the
    remote. A lock beside each mirror makes processes sharing the cache (two Ray tasks on one
    node, two runs) take turns, so none sees a half-made clone or collides in a fetch.
    """
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "repo"
    target = cache_dir / f"{stem}-{digest}.git"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(f"{stem}-{digest}.lock")):
        if target.exists() and wanted and all(_has_commit(target, sha) for sha in wanted):
            return target
        _clone_or_fetch(url, shown, target)
    return target


def _clone_or_fetch(url: str, shown: str, target: Path) -> None:
    if target.exists():
        command = ["git", f"--git-dir={target}", "fetch", "--prune", "--quiet", "origin"]
    else:
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
        install_directory(partial, target)


def resolve(spec: RepoSpec, cache_dir: Path) -> Repository:
    """Find or fetch the repository of `spec`; raise a one-line error if it cannot be mined."""
    if spec.is_url:
        git_dir = _cached_clone(spec.source, spec.shown, cache_dir)
    else:
        git_dir = local_git_dir(spec.source)
    return Repository(spec, spec.display_name(), git_dir, _pinned(git_dir, spec))


def reach_here(repo: Repository, cache_dir: Path | None = None) -> Repository:
    """`repo` as this process reaches it, holding every commit its resolution pinned.

    A Ray task may run on another machine than the one that resolved the inputs: a clone URL is
    mirrored into this machine's cache (`cache_dir`, by default this machine's user cache), a
    path must be on storage this machine reads as well.
    """
    wanted = _revision_commits(repo.revision)
    if repo.spec.is_url:
        git_dir = _cached_clone(
            repo.spec.source, repo.spec.shown, cache_dir or default_cache_dir(), wanted
        )
    else:
        git_dir = repo.git_dir
    missing = [sha for sha in wanted if not _has_commit(git_dir, sha)]
    if not missing:
        return dataclasses.replace(repo, git_dir=git_dir)
    if repo.spec.is_url:
        raise ZenCoderError(
            f"{repo.spec.shown}: commit {missing[0]} is gone from the remote (history rewritten "
            "during the run?); run again"
        )
    raise ZenCoderError(
        f"{repo.spec.shown}: {git_dir} is not readable on host {socket.gethostname()} or lacks "
        f"commit {missing[0][:12]}; put path inputs on storage every node reads, or pass a "
        "clone URL"
    )


def _pinned(git_dir: Path, spec: RepoSpec) -> str:
    """The spec's revision with each end of a range (or the single revision) as a commit id."""
    separator = next((s for s in ("...", "..") if s in spec.revision), None)
    ends = spec.revision.split(separator) if separator else [spec.revision]
    commits = [_commit_id(git_dir, end or "HEAD", spec) for end in ends]
    return separator.join(commits) if separator else commits[0]


def _commit_id(git_dir: Path, revision: str, spec: RepoSpec) -> str:
    found = git(git_dir, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
    if found.returncode == 0:
        return found.stdout.decode().strip()
    if spec.revision == "HEAD":
        raise EmptyRepository(f"{spec.shown}: repository has no commits; skipped")
    raise ZenCoderError(
        f"{spec.shown}: revision {spec.revision!r} not found; check the branch or range"
    )


def _revision_commits(revision: str) -> list[str]:
    return [sha for sha in re.split(r"\.\.\.?", revision) if sha]


def _has_commit(git_dir: Path, sha: str) -> bool:
    return git(git_dir, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0


def shallow_boundary(git_dir: Path) -> set[str]:
    """Commits whose parents a shallow clone lacks: their diffs would show the whole tree added."""
    shallow = git_dir / "shallow"
    return set(shallow.read_text().split()) if shallow.exists() else set()


def root_commits(repo: Repository) -> set[str]:
    """Root commits reachable from any end of the revision.

    They only decide which repositories are compared for shared commits, so counting the roots
    of a range's excluded end too can cost a comparison but never change what is shared.
    """
    tips = _revision_commits(repo.revision)
    out = git(repo.git_dir, "rev-list", "--max-parents=0", *tips, "--").stdout
    return set(out.decode().split())


def commit_count(repo: Repository) -> int:
    return int(git(repo.git_dir, "rev-list", "--count", repo.revision, "--").stdout)


def all_commits(repo: Repository) -> set[str]:
    return set(git(repo.git_dir, "rev-list", repo.revision, "--").stdout.decode().split())
