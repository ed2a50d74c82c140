"""Why the miner reads history through long-lived git processes rather than pygit2 (libgit2).

Both candidates do the traversal work every mining run needs, single-threaded, on the same
repository, in the same run: list each commit's changed files, then read the old and new blob of
every changed file.

- pygit2: a revwalk, a tree-to-tree diff per commit, and a blob lookup per file version;
- git processes: one `git log --raw` stream (zen_coder.history.gitio.LogStream) and one
  `git cat-file --batch` (gitio.BlobReader), as the miner uses them.

    python benchmarks/traversal_choice.py [REPO]   # default: the mine_throughput.py repository
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2

from zen_coder.history.gitio import ZERO_OID, BlobReader, LogStream


def with_pygit2(repo_path: Path) -> tuple[int, int]:
    repo = pygit2.Repository(str(repo_path))
    sort = pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE
    versions = size = 0
    for commit in repo.walk(repo.head.target, sort):
        if len(commit.parents) > 1:
            continue
        parent = commit.parents[0].tree if commit.parents else repo.get(repo.TreeBuilder().write())
        for delta in parent.diff_to_tree(commit.tree).deltas:
            for side in (delta.old_file, delta.new_file):
                if str(side.id) != ZERO_OID:
                    size += len(repo[side.id].data)
                    versions += 1
    return versions, size


def with_git_processes(repo_path: Path) -> tuple[int, int]:
    git_dir = str(repo_path / ".git")
    reader = BlobReader(git_dir)
    versions = size = 0
    stream = LogStream(git_dir, "HEAD", rename_limit=64)  # as the miner runs it
    try:
        for commit in stream:
            if len(commit.parents) > 1:
                continue
            oids = [
                oid
                for change in commit.changes
                for oid in (change.old_oid, change.new_oid)
                if oid != ZERO_OID
            ]
            for data in reader.contents(oids).values():
                size += len(data or b"")
                versions += 1
    finally:
        stream.close()
        reader.close()
    return versions, size


def git_log_p(repo_path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(repo_path), "log", "-p"], stdout=subprocess.DEVNULL, check=True
    )


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    default = Path(tempfile.gettempdir()) / "zen-coder-bench-synthetic-20000"
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not (repo / ".git").exists():
        sys.exit(f"{repo} is not a repository: run benchmarks/mine_throughput.py first or pass one")
    floor, _ = timed(git_log_p, repo)
    git_seconds, (git_versions, git_bytes) = timed(with_git_processes, repo)
    lib_seconds, (lib_versions, lib_bytes) = timed(with_pygit2, repo)
    print(f"repository: {repo}")
    print(f"{'':24}{'seconds':>10}{'file versions':>16}{'MB read':>10}")
    for label, seconds, versions, size in [
        ("git log --raw + cat-file", git_seconds, git_versions, git_bytes),
        ("pygit2 (libgit2)", lib_seconds, lib_versions, lib_bytes),
    ]:
        print(f"{label:24}{seconds:10.2f}{versions:16,}{size / 1e6:10.0f}")
    print(f"{'git log -p (floor)':24}{floor:10.2f}")
    print(f"pygit2 takes {lib_seconds / git_seconds:.1f}x the time of the git processes")


if __name__ == "__main__":
    main()
