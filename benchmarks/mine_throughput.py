"""Throughput of `zen-coder mine` against PyDriller and raw `git log -p`, in the same run.

Repositories: the five real ones in `../shared/repos/` (git bundles, cloned once into a cache
folder under the system's temporary directory) and a synthetic one of at least 20,000 commits of
real code (built once by synthetic_repo.py and reused). For each it measures:

- `zen-coder mine` with one worker, and with the default workers (one per core): all filters,
  dedup, Parquet output;
- PyDriller reading the same fields of the same commits (merges skipped, as mine skips them):
  message, author, dates, and for each modified file its paths, change type, diff, contents
  before and after and added/deleted line counts;
- `git log -p --no-merges > /dev/null`, the floor: git reading and diffing every non-merge
  commit's files and doing nothing else.

Every figure is the best wall time of `--repeat` runs, with zen-coder's bytecode compiled first,
as `pip install` compiles it. It prints, per repository and in a final table, the ratios against
the targets: one worker at least 5x faster than PyDriller, the default workers within 3x of the
time of `git log -p`, peak RSS under 1 GB. The machine's other load shifts absolute times; the
ratios come from the same run.

    pip install -e '.[bench]'
    python benchmarks/mine_throughput.py                       # five real repositories + synthetic
    python benchmarks/mine_throughput.py --skip-synthetic --repos attrs cobra   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLES = ROOT.parent / "shared" / "repos"
CACHE = Path(tempfile.gettempdir()) / "zen-coder-bench-repos"

PYDRILLER_TARGET = 5.0  # one worker at least this many times faster than PyDriller
GIT_LOG_TARGET = 3.0  # default workers within this many times the time of `git log -p`
RSS_TARGET_MB = 1024

# Runs a command and prints its wall seconds, the peak RSS (KiB) of its largest process (children
# included), its CPU seconds (user and system, children included) and its exit status.
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, code)
"""

PYDRILLER = """
import sys
from pydriller import Repository
limit = int(sys.argv[2])
commits = files = 0
for commit in Repository(sys.argv[1], only_no_merge=True).traverse_commits():
    if commits == limit:
        break
    commits += 1
    commit.msg, commit.author.email, commit.author_date, commit.committer_date
    for changed in commit.modified_files:
        files += 1
        changed.old_path, changed.new_path, changed.change_type
        try:
            changed.diff, changed.source_code_before, changed.source_code
        except ValueError:  # a submodule: GitPython cannot read its commit as a blob
            continue
        changed.added_lines, changed.deleted_lines
print(commits, files, file=sys.stderr)
"""


@dataclass
class Timing:
    seconds: float  # wall
    rss_mb: float
    cpu: float  # seconds of CPU, all processes: a steadier figure than wall time on a busy machine


@dataclass
class Result:
    name: str
    commits: int  # all commits, merges included
    non_merge: int
    changes: int  # changed files of non-merge commits, as mine counts them
    one_worker: Timing
    default_workers: Timing
    fixed_cost: float  # a rerun with nothing new to mine: start-up, resolving, manifest
    pydriller: Timing  # for the whole non-merge history (extrapolated if it was cut short)
    pydriller_commits: int
    git_log: Timing

    @property
    def vs_pydriller(self) -> float:
        """How many times faster one worker is than PyDriller (higher is better)."""
        return self.pydriller.seconds / self.one_worker.seconds

    @property
    def cpu_vs_pydriller(self) -> float:
        """The same in CPU seconds, which a busy machine disturbs less than wall time."""
        return self.pydriller.cpu / self.one_worker.cpu

    @property
    def vs_git_log(self) -> float:
        """How many times the time of `git log -p` the default workers take (lower is better)."""
        return self.default_workers.seconds / self.git_log.seconds


def measure(command: list[str], repeat: int, stderr_path: Path | None = None) -> Timing:
    """Best wall seconds of `repeat` runs of `command`, and the largest peak RSS in MB."""
    timings = []
    for _ in range(repeat):
        with open(stderr_path or os.devnull, "w") as err:
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, *command],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                check=True,
            ).stdout.split()
        if out[3] != "0":
            sys.exit(f"benchmark command failed: {' '.join(command)}")
        timings.append(Timing(float(out[0]), int(out[1]) / 1024, float(out[2])))
    return Timing(
        min(t.seconds for t in timings),
        max(t.rss_mb for t in timings),
        min(t.cpu for t in timings),
    )


def git_output(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def synthetic_repo(commits: int) -> Path:
    target = Path(tempfile.gettempdir()) / f"zen-coder-bench-synthetic-{commits}"
    if not (target / ".git").exists():
        print(f"building a {commits:,}-commit repository in {target} ...", flush=True)
        command = [sys.executable, str(HERE / "synthetic_repo.py"), str(target)]
        subprocess.run([*command, "--commits", str(commits)], check=True)
        # A clone's pack has deltas; fast-import's does not. Read what users read.
        subprocess.run(["git", "-C", str(target), "repack", "-q", "-a", "-d", "-f"], check=True)
    return target


def available_bundles() -> list[str]:
    return sorted(path.stem for path in BUNDLES.glob("*.bundle"))


def bundle_repo(name: str) -> Path:
    """A clone of `../shared/repos/<name>.bundle`, made once and reused while the bundle's tip is
    unchanged (the bundle itself stays read-only)."""
    bundle = BUNDLES / f"{name}.bundle"
    if not bundle.exists():
        sys.exit(f"no bundle {bundle}; choose from {', '.join(available_bundles())}")
    target = CACHE / name
    heads = subprocess.run(
        ["git", "bundle", "list-heads", str(bundle)], capture_output=True, text=True, check=True
    ).stdout.split()
    if target.exists() and heads and git_output(target, "rev-parse", "HEAD").strip() != heads[0]:
        shutil.rmtree(target)
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["git", "clone", "--quiet", str(bundle), str(partial)], check=True)
        partial.rename(target)
    return target


def compile_zen_coder() -> None:
    """Write the bytecode of the zen-coder that the runs import, as `pip install` does. Without
    it, and with PYTHONDONTWRITEBYTECODE set, every run would compile zen-coder's modules again:
    0.02 s of a rerun that finds nothing to mine, which a user's installed copy never pays."""
    package = subprocess.run(
        [sys.executable, "-c", "import os, zen_coder; print(os.path.dirname(zen_coder.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True)


def run_git_log(repo: Path, repeat: int) -> Timing:
    return measure(["git", "-C", str(repo), "log", "-p", "--no-merges"], max(repeat, 3))


def run_zen_coder(repo: Path, workers: int | None, repeat: int) -> tuple[Timing, dict, float]:
    """The timing of a full mine, the manifest's totals, and the seconds of a rerun with nothing
    new to mine (the fixed cost: start-up, resolving, manifest)."""
    command = [sys.executable, "-m", "zen_coder.cli", "mine", str(repo), "--quiet"]
    if workers is not None:
        command += ["--workers", str(workers)]
    best: Timing | None = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "mined"
            timing = measure([*command, "--out", str(out)], 1)
            totals = json.loads((out / "manifest.json").read_text())["totals"]
            rerun = measure([*command, "--out", str(out)], 1).seconds
        if best is None or timing.seconds < best.seconds:
            best = timing
    return best, totals, rerun


def run_pydriller(repo: Path, limit: int, repeat: int) -> tuple[Timing, int]:
    with tempfile.NamedTemporaryFile("r") as counts:
        command = [sys.executable, "-c", PYDRILLER, str(repo), str(limit)]
        timing = measure(command, repeat, Path(counts.name))
        commits, _ = map(int, Path(counts.name).read_text().split())
    return timing, commits


def measure_repo(name: str, repo: Path, pydriller_limit: int, repeat: int) -> Result:
    commits = int(git_output(repo, "rev-list", "--count", "HEAD"))
    non_merge = int(git_output(repo, "rev-list", "--count", "--no-merges", "HEAD"))
    print(f"\n== {name}: {repo} ({commits:,} commits, {non_merge:,} not merges) ==", flush=True)
    git_log = run_git_log(repo, repeat)
    one, totals, fixed = run_zen_coder(repo, 1, repeat)
    default, _, _ = run_zen_coder(repo, None, repeat)
    limit = min(pydriller_limit or non_merge, non_merge)
    pydriller, pydriller_commits = run_pydriller(repo, limit, repeat)
    if pydriller_commits < non_merge:  # cut short: scale to the whole history
        scale = non_merge / max(pydriller_commits, 1)
        pydriller = Timing(pydriller.seconds * scale, pydriller.rss_mb, pydriller.cpu * scale)
    result = Result(
        name,
        commits,
        non_merge,
        totals["changes_seen"],
        one,
        default,
        fixed,
        pydriller,
        pydriller_commits,
        git_log,
    )
    print_repo(result)
    return result


def print_repo(result: Result) -> None:
    workers = os.cpu_count()
    rows = [
        ("zen-coder mine, 1 worker", result.one_worker),
        (f"zen-coder mine, {workers} workers", result.default_workers),
        (
            "PyDriller" + ("" if result.pydriller_commits == result.non_merge else " (scaled)"),
            result.pydriller,
        ),
        ("git log -p --no-merges", result.git_log),
    ]
    print(f"{'':34}{'seconds':>9}{'CPU s':>8}{'commits/s':>11}{'files/s':>10}{'peak RSS':>12}")
    for label, timing in rows:
        print(
            f"{label:34}{timing.seconds:9.2f}{timing.cpu:8.2f}"
            f"{result.non_merge / timing.seconds:11,.0f}{result.changes / timing.seconds:10,.0f}"
            f"{timing.rss_mb:9,.0f} MB"
        )
    print(
        f"1 worker vs PyDriller: {result.vs_pydriller:.1f}x faster "
        f"(target >= {PYDRILLER_TARGET:g}x; in CPU seconds {result.cpu_vs_pydriller:.1f}x)"
    )
    print(
        f"{workers} workers vs git log -p: {result.vs_git_log:.2f}x the time "
        f"(target <= {GIT_LOG_TARGET:g}x)"
    )
    print(f"fixed cost (rerun, nothing new to mine): {result.fixed_cost:.2f} s")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_summary(results: list[Result]) -> None:
    workers = os.cpu_count()
    print(
        f"\nSummary: wall seconds, best of each; {workers} cores. Targets: 1 worker >= "
        f"{PYDRILLER_TARGET:g}x faster than PyDriller, {workers} workers <= {GIT_LOG_TARGET:g}x "
        "the time of git log -p, peak RSS < 1 GB. (CPU: the PyDriller ratio in CPU seconds.)"
    )
    header = (
        f"{'repository':14}{'commits':>8}{'1 worker':>10}{f'{workers} workers':>11}"
        f"{'PyDriller':>11}{'git log':>9}{'vs PyDriller':>18}{'(CPU)':>7}{'vs git log':>17}"
        f"{'RSS':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        rss = max(r.one_worker.rss_mb, r.default_workers.rss_mb)
        print(
            f"{r.name:14}{r.commits:8,}{r.one_worker.seconds:9.2f}s"
            f"{r.default_workers.seconds:10.2f}s{r.pydriller.seconds:10.2f}s"
            f"{r.git_log.seconds:8.2f}s"
            f"{r.vs_pydriller:10.1f}x {verdict(r.vs_pydriller >= PYDRILLER_TARGET):>6}"
            f"{r.cpu_vs_pydriller:6.1f}x"
            f"{r.vs_git_log:9.2f}x {verdict(r.vs_git_log <= GIT_LOG_TARGET):>6}"
            f"{rss:6,.0f} MB {verdict(rss < RSS_TARGET_MB):>3}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repos",
        nargs="*",
        metavar="NAME",
        help="bundles of ../shared/repos to measure (default: all, "
        + ", ".join(available_bundles())
        + ")",
    )
    parser.add_argument(
        "--repo", type=Path, action="append", default=[], help="also this repository"
    )
    parser.add_argument(
        "--skip-synthetic", action="store_true", help="leave out the large synthetic repository"
    )
    parser.add_argument(
        "--commits", type=int, default=20_000, help="size of the synthetic repository"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best counts"
    )
    parser.add_argument(
        "--pydriller-commits",
        type=int,
        default=0,
        help="stop PyDriller after this many commits and scale its time (default: all)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    compile_zen_coder()
    names = available_bundles() if args.repos is None else args.repos
    targets = [(name, bundle_repo(name)) for name in names]
    targets += [(path.name, path.resolve()) for path in args.repo]
    if not args.skip_synthetic:
        targets.append(("synthetic", synthetic_repo(args.commits)))
    results = [
        measure_repo(name, repo, args.pydriller_commits, args.repeat) for name, repo in targets
    ]
    print_summary(results)
    print(f"\nbenchmark finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
