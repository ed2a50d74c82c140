"""Build a large, realistic git repository for mining benchmarks.

The history is synthetic but its content is real code: files start as real source files found on
this machine (the Python standard library and the JavaScript of globally installed npm packages)
and every commit edits a few of them with spans of lines taken from other real files. The stream
goes through one `git fast-import` process, so 20,000 commits take seconds, and the same seed
always gives the same repository (same commit SHAs).

    python benchmarks/synthetic_repo.py /tmp/synthetic --commits 20000
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

HUMANS = [(f"Developer {i}", f"dev{i}@example.org") for i in range(20)]
BOT = ("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com")
MESSAGES = [
    "Fix off-by-one error in {name}",
    "Refactor {name} for readability",
    "Add tests for {name}",
    "Handle empty input in {name}",
    "Improve error message in {name}",
    "Speed up {name} by caching results",
    "Remove unused import from {name}",
    "Document the {name} module",
]
MAX_LINES = 400


def corpus_files() -> list[Path]:
    """Real source files on this machine, sorted so the corpus is stable."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    files += sorted(Path("/usr/lib/node_modules").glob("**/lib/**/*.js"))[:600]
    return [f for f in files if f.stat().st_size > 2000]


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return text.splitlines(keepends=True)[:MAX_LINES]


def data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


class HistoryWriter:
    """Writes commits as a fast-import stream."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.mark = 0
        self.time = 1_500_000_000

    def commit(self, author: tuple[str, str], message: str, ops: list[bytes]) -> None:
        self.mark += 1
        self.time += 600
        who = f"{author[0]} <{author[1]}> {self.time} +0000\n".encode()
        out = [b"commit refs/heads/main\n", b"mark :%d\n" % self.mark]
        out += [b"author " + who, b"committer " + who, data(message.encode())]
        if self.mark > 1:
            out.append(b"from :%d\n" % (self.mark - 1))
        out += ops
        self.stream.write(b"".join(out))


def modify(path: str, lines: list[str]) -> bytes:
    return f"M 100644 inline {path}\n".encode() + data("".join(lines).encode())


def build(target: Path, commits: int, seed: int) -> None:
    rng = random.Random(seed)
    sources = corpus_files()
    if len(sources) < 50:
        sys.exit("not enough source files on this machine to build a realistic repository")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(target)], check=True)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"], cwd=target, stdin=subprocess.PIPE
    )
    writer = HistoryWriter(proc.stdin)
    files: dict[str, list[str]] = {}
    for src in sources[:40]:
        files[f"src/{src.parent.name}/{src.name}"] = read_lines(src)
    writer.commit(HUMANS[0], "Initial import", [modify(p, c) for p, c in files.items()])
    for _ in range(commits - 1):
        paths = sorted(files)
        roll = rng.random()
        if roll < 0.02:
            author = BOT
            message = f"Bump requests from 2.{rng.randint(0, 31)}.0 to 2.32.{rng.randint(0, 9)}"
            lock = [f"requests=={rng.randint(0, 99)}\n", f"urllib3=={rng.randint(0, 99)}\n"]
            ops = [modify("requirements.lock", lock)]
        elif roll < 0.04:
            src = rng.choice(sources)
            path = f"src/{src.parent.name}/new_{rng.randint(0, 10**6)}_{src.name}"
            files[path] = read_lines(src)
            author, message = rng.choice(HUMANS), f"Add {Path(path).stem}"
            ops = [modify(path, files[path])]
        elif roll < 0.05 and len(files) > 30:
            path = rng.choice(paths)
            del files[path]
            author, message, ops = rng.choice(HUMANS), f"Remove {path}", [f"D {path}\n".encode()]
        elif roll < 0.06:
            old = rng.choice(paths)
            new = str(Path(old).with_name("renamed_" + Path(old).name))
            files[new] = files.pop(old)
            author, message = rng.choice(HUMANS), f"Rename {old} to {new}"
            ops = [f"R {old} {new}\n".encode()]
        else:
            author = rng.choice(HUMANS)
            touched = rng.sample(paths, k=min(len(paths), rng.choice([1, 1, 1, 2, 2, 3])))
            ops = []
            for path in touched:
                lines = files[path]
                donor = read_lines(rng.choice(sources))
                start = rng.randrange(max(1, len(lines)))
                cut = rng.randint(0, 8)
                take = rng.randrange(max(1, len(donor)))
                lines[start : start + cut] = donor[take : take + rng.randint(1, 8)]
                files[path] = lines[:MAX_LINES]
                ops.append(modify(path, files[path]))
            message = rng.choice(MESSAGES).format(name=Path(touched[0]).stem)
        writer.commit(author, message, ops)
    proc.stdin.write(b"done\n")
    proc.stdin.close()
    if proc.wait() != 0:
        sys.exit("git fast-import failed")
    subprocess.run(["git", "checkout", "-q", "main"], cwd=target, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--commits", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.target, args.commits, args.seed)


if __name__ == "__main__":
    main()
