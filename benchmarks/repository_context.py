"""Repository context on a real repository: building the index against refreshing it.

On a clone of a repository (a path or a git bundle), in one run:

    build       a new `RepositoryContext` refreshed once: the history walked from the root, every
                file read, chunked with tree-sitter and indexed with BM25 (the baseline)
    unchanged   a refresh with nothing changed: the files listed and stat'ed, HEAD compared
    edit        a refresh after the largest code file was edited: that file chunked again, its
                chunks replaced in the BM25 index
    commit      a refresh after one new commit: the walk of that commit only, the file again
    query       retrieval for a cursor in the middle of a file (`snippets`, 1,500 characters)
    keystroke   a prompt's parts for a cursor typing in the middle of that file, one character
                more each time (`prompt_parts`: snippets, changes, line ages), and the prompt
                built in the zen-coder layout (tokens counted as characters / 3: no tokenizer)
    ages        the line ages alone at each keystroke (the blame cached: one xdiff)
    new ages    the line ages at a file's first keystroke (its history followed through each
                of its versions, as `prepare` does), on a context just refreshed
    next ages   the line ages at the first keystroke after a commit (only the new change
                followed)

Each is the median of `--repeat` runs; the ratios printed are build over each refresh, and the
keystroke's cost with ages over without (keystroke / (keystroke - ages)).

    python benchmarks/repository_context.py ../shared/repos/attrs.bundle
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zen_coder.inference.prompts import Budget, PromptFormat
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
        typed = iter(range(10**6))
        form, budget = PromptFormat.from_family("zen-coder"), Budget()

        def keystroke() -> None:
            cursor = prefix + "x" * next(typed)
            parts = context.prompt_parts(cursor, suffix, relative, None, budget)
            form.build(parts, budget, lambda text: len(text) // 3 + 1)

        def ages() -> None:
            context.ages(relative, prefix + "x" * next(typed) + suffix)

        typing = seconds(keystroke, args.repeat)
        aging = seconds(ages, args.repeat)
        after_commit = []
        for _ in range(args.repeat):
            commit()
            after_commit.append(seconds(ages, 1))
        next_ages = statistics.median(after_commit)
        context.close()
        first = []
        for _ in range(args.repeat):
            fresh = RepositoryContext(root)
            fresh.refresh()
            first.append(seconds(functools.partial(fresh.ages, relative, prefix + suffix), 1))
            fresh.close()
        new_ages = statistics.median(first)

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
    without = typing - aging
    print(
        f"{'keystroke':>10} {typing * 1000:9.1f} ms   with ages / without = {typing / without:.2f}x"
    )
    print(f"{'ages':>10} {aging * 1000:9.1f} ms")
    print(f"{'new ages':>10} {new_ages * 1000:9.1f} ms   (a file's first keystroke)")
    print(f"{'next ages':>10} {next_ages * 1000:9.1f} ms   (the first after a commit)")


if __name__ == "__main__":
    main()
