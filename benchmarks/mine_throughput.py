"""Throughput of `zen-coder mine` against PyDriller and raw `git log -p`, in the same run.

For each repository — a synthetic one of at least 20,000 commits of real code (built once by
synthetic_repo.py and reused) and this repository's own history — it measures:

- `zen-coder mine` (all filters, dedup, Parquet output; default workers = cores);
- PyDriller extracting the same fields: message, author, dates, and for each modified file its
  paths, change type, diff, contents before and after and added/deleted line counts;
- `git log -p > /dev/null`, the floor: git printing every diff and doing nothing else.

It prints commits/s, changed files/s, peak RSS (largest process) and the ratios against the
targets: at least 5x PyDriller, within 3x of `git log -p`, peak RSS under 1 GB.

    pip install -e '.[bench]'
    python benchmarks/mine_throughput.py [--commits 20000] [--pydriller-commits N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Runs a command and prints the peak RSS (KiB) of its largest process, children included.
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
elapsed = time.perf_counter() - start
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""

PYDRILLER = """
import sys
from pydriller import Repository
limit = int(sys.argv[2])
commits = files = 0
for commit in Repository(sys.argv[1]).traverse_commits():
    if commits == limit:
        break
    commits += 1
    commit.msg, commit.author.email, commit.author_date, commit.committer_date
    for changed in commit.modified_files:
        files += 1
        changed.old_path, changed.new_path, changed.change_type
        changed.diff, changed.source_code_before, changed.source_code
        changed.added_lines, changed.deleted_lines
print(commits, files, file=sys.stderr)
"""


def measure(command: list[str], stderr_path: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS in MB of `command`."""
    with open(stderr_path or os.devnull, "w") as err:
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, *command],
            capture_output=False,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=True,
        ).stdout.split()
    if out[2] != "0":
        sys.exit(f"benchmark command failed: {' '.join(command)}")
    return float(out[0]), int(out[1]) / 1024


def synthetic_repo(commits: int) -> Path:
    target = Path(tempfile.gettempdir()) / f"zen-coder-bench-synthetic-{commits}"
    if not (target / ".git").exists():
        print(f"building a {commits:,}-commit repository in {target} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(HERE / "synthetic_repo.py"),
                str(target),
                "--commits",
                str(commits),
            ],
            check=True,
        )
        # A clone's pack has deltas; fast-import's does not. Read what users read.
        subprocess.run(["git", "-C", str(target), "repack", "-q", "-a", "-d", "-f"], check=True)
    return target


def run_git_log(repo: Path) -> tuple[float, float]:
    best = min(
        (measure(["git", "-C", str(repo), "log", "-p"]) for _ in range(3)), key=lambda m: m[0]
    )
    return best


def run_zen_coder(repo: Path, workers: int) -> tuple[float, float, int, int, float]:
    """Seconds, peak RSS, commits, changed files; and the seconds of a rerun with nothing new,
    which is the fixed cost (start-up, resolving, manifest) that dominates a tiny history."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "mined"
        command = [sys.executable, "-m", "zen_coder.cli", "mine", str(repo), "--out", str(out)]
        command += ["--quiet", "--workers", str(workers)]
        seconds, rss = measure(command)
        totals = json.loads((out / "manifest.json").read_text())["totals"]
        rerun, _ = measure(command)
    return seconds, rss, totals["commits_seen"], totals["changes_seen"], rerun


def run_pydriller(repo: Path, limit: int) -> tuple[float, float, int, int]:
    with tempfile.NamedTemporaryFile("r") as counts:
        seconds, rss = measure(
            [sys.executable, "-c", PYDRILLER, str(repo), str(limit)], Path(counts.name)
        )
        commits, files = map(int, Path(counts.name).read_text().split())
    return seconds, rss, commits, files


def report(name: str, repo: Path, workers: int, pydriller_limit: int) -> None:
    commit_count = int(
        subprocess.run(
            ["git", "-C", str(repo), "rev-list", "--count", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    print(f"\n== {name}: {repo} ({commit_count:,} commits) ==", flush=True)
    git_seconds, git_rss = run_git_log(repo)
    zen_seconds, zen_rss, zen_commits, zen_files, zen_fixed = run_zen_coder(repo, workers)
    limit = pydriller_limit or commit_count
    py_seconds, py_rss, py_commits, py_files = run_pydriller(repo, limit)
    rows = [
        ("zen-coder mine", zen_seconds, zen_commits, zen_files, zen_rss),
        ("PyDriller", py_seconds, py_commits, py_files, py_rss),
        ("git log -p", git_seconds, commit_count, zen_files, git_rss),
    ]
    print(f"{'':16}{'seconds':>10}{'commits':>10}{'commits/s':>12}{'files/s':>12}{'peak RSS':>12}")
    for label, seconds, commits, files, rss in rows:
        print(
            f"{label:16}{seconds:10.2f}{commits:10,}{commits / seconds:12,.0f}"
            f"{files / seconds:12,.0f}{rss:10,.0f} MB"
        )
    zen_rate, py_rate = zen_commits / zen_seconds, py_commits / py_seconds
    print(f"zen-coder vs PyDriller: {zen_rate / py_rate:.1f}x the commits/s (target >= 5x)")
    print(f"zen-coder vs git log -p: {zen_seconds / git_seconds:.2f}x the time (target <= 3x)")
    print(f"zen-coder peak RSS: {zen_rss:,.0f} MB (target < 1,024 MB)")
    print(f"zen-coder fixed cost (rerun, nothing new to mine): {zen_fixed:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20_000, help="size of the synthetic repo")
    parser.add_argument("--repo", type=Path, help="measure this repository instead of building one")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="zen-coder workers")
    parser.add_argument(
        "--pydriller-commits",
        type=int,
        default=0,
        help="stop PyDriller after this many commits (default: all; it is the slow one)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    repo = args.repo or synthetic_repo(args.commits)
    report("large repository", repo, args.workers, args.pydriller_commits)
    report("this repository", ROOT, args.workers, args.pydriller_commits)
    print(f"\nbenchmark finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
