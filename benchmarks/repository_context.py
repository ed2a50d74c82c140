"""Repository context on a real repository: building the index against refreshing it.

On a clone of a repository (a path or a git bundle), in one run:

    build       a new `RepositoryContext` refreshed once: the history walked from the root, every
                file read, chunked with tree-sitter and indexed with BM25 (the baseline)
    unchanged   a refresh with nothing changed: the files listed and stat'ed, HEAD compared
    edit        a refresh after the largest code file was edited: that file chunked again, its
                chunks replaced in the BM25 index
    commit      a refresh after one new commit: the walk of that commit only, the file again
    query       retrieval for a cursor in the middle of a file (`snippets`, 1,500 characters)

Each is the median of `--repeat` runs; the ratios printed are build over each refresh.

    python benchmarks/repository_context.py ../shared/repos/attrs.bundle
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zen_coder.inference.repository import RepositoryContext

CODE = {".py", ".rs", ".go", ".ts", ".js"}


def seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def largest_code_file(root: Path) -> Path:
    """The largest tracked file in a language with a grammar, where an edit costs the most."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True
    ).stdout.decode()
    code = [root / path for path in listed.split("\0") if path and Path(path).suffix in CODE]
    return max(code, key=lambda path: path.stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a git repository or bundle to clone")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "clone"
        subprocess.run(["git", "clone", "-q", args.source, str(root)], check=True)
        git(root, "config", "user.name", "Bench")
        git(root, "config", "user.email", "bench@example.org")

        def build() -> RepositoryContext:
            context = RepositoryContext(root)
            context.refresh()
            return context

        built = seconds(build, args.repeat)
        context = RepositoryContext(root)
        stats = context.refresh()
        target = largest_code_file(root)
        original = target.read_text()
        edits = iter(range(10**6))

        def edit() -> None:
            target.write_text(original + f"\n// added_{next(edits)}\n")
            context.refresh()

        def commit() -> None:
            target.write_text(original + f"\n// committed_{next(edits)}\n")
            git(root, "commit", "-qam", "Add a function")
            context.refresh()

        unchanged = seconds(context.refresh, args.repeat)
        edited = seconds(edit, args.repeat)
        committed = seconds(commit, args.repeat)
        lines = original.splitlines(keepends=True)
        middle = len(lines) // 2
        prefix, suffix = "".join(lines[:middle]), "".join(lines[middle:])
        relative = target.relative_to(root).as_posix()
        query = seconds(lambda: context.snippets(relative, prefix, suffix, 1500), args.repeat)
        context.close()

    print(
        f"{args.source}: {stats.files} files indexed, {stats.chunks} chunks, "
        f"{stats.commits} commits walked; median of {args.repeat} runs"
    )
    for name, value in (
        ("build", built),
        ("unchanged", unchanged),
        ("edit", edited),
        ("commit", committed),
        ("query", query),
    ):
        ratio = "" if name in ("build", "query") else f"   build / {name} = {built / value:6.1f}x"
        print(f"{name:>10} {value * 1000:9.1f} ms{ratio}")


if __name__ == "__main__":
    main()
