"""The history benchmark: redo a repository's newest commits, given the file before and the message.

Problems are the modified files of the commits `zen-coder prepare` held out for validation (the
newest of each repository), read from the prepared folder's manifest, so a model trained on the
prepared data has never seen them. A
proposed file is scored three ways:

* exact match with the file the commit wrote (both normalized as `zen-coder mine` normalizes code);
* edit similarity with it: 1 - character Levenshtein distance / length of the longer file;
* for a Python file of a project with pytest tests: the project's tests, run in a sandbox on the
  commit's own checkout with the file replaced. The unmodified checkout must pass them first;
  where it does not, the problem is `reference_failed` and left out of the test score.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc

from zen_coder.data.pipeline import prepared_split
from zen_coder.data.records import read_shard
from zen_coder.data.tokenizer import EOS, SPECIAL_TOKENS, read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.sandbox import Limits, Sandbox
from zen_coder.files import user_cache_dir
from zen_coder.history.extract import normalize
from zen_coder.history.sources import RepoSpec, resolve

COLUMNS = [
    "repo",
    "commit",
    "parent",
    "committer_time",
    "message",
    "path",
    "change_type",
    "language",
    "old_content",
    "new_content",
    "diff",
]
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini")
TEST_FILES = ("test_*.py", "*_test.py")  # pytest's default `python_files`
SKIPPED_DIRS = (".*", "*.egg", "build", "dist", "node_modules", "venv", "__pycache__")
PYTEST = ("python", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
WITHOUT_TESTS = "load the problems with tests=False to score without running tests"
TEST_LIMITS = Limits(wall_seconds=120.0, memory_bytes=4 << 30)

PROMPT_TEMPLATES: dict[str, str] = {
    # `zen-coder prepare`'s commit_edit sample with edit_target "after", cut where the new file
    # begins: a native model continues with the file and then <|endoftext|>. Each special token
    # is a role, spelled as the prepared data's tokenizer spells it (HistoryProblem.markers).
    "zen-coder": (
        "<|repo|>{repo}<|path|>{path}<|lang|>{language}"
        "<|before|>{before}<|message|>{message}<|after|>"
    ),
    "plain": (
        "You are making a commit to the repository {repo}. This is the file `{path}` "
        "({language}) before the commit:\n\n"
        "{fence}{info}\n{before}{fence}\n\n"
        "The commit message:\n\n{message}\n\n"
        "Make the change the message describes. Reply with the complete updated file "
        "`{path}` in a single fenced code block, and nothing else.\n"
    ),
}
_STOP = {"zen-coder": (EOS,), "plain": ()}
# The roles spelled as a tokenizer `prepare` trained spells them: by their own names.
OWN_MARKERS: Mapping[str, str] = {role: role for role in SPECIAL_TOKENS}
_ROLE = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))
_FENCED = re.compile(r"^(`{3,})[^`\n]*\n(.*?)(?:^\1`*[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class HistoryProblem:
    task_id: str  # f"{repo}@{commit[:12]}:{path}"
    repo: str
    commit: str
    parent: str | None
    path: str
    language: str
    message: str
    before: str
    after: str
    diff: str
    source: str | None  # the repository's path or URL from the mined manifest, for its tests
    test_command: tuple[str, ...] | None  # run from the checkout's root; "python": the evaluator's
    # Each role's token as the prepared data's tokenizer spells it: a model fine-tuned from a
    # base learned the base's tokens (its EOS, its file markers) for zen-coder's roles.
    markers: Mapping[str, str] = field(default_factory=lambda: OWN_MARKERS)


@dataclass(frozen=True)
class HistoryScore:
    exact: bool
    similarity: float
    tests: str | None  # None, "passed", "failed", "reference_failed" or "error: ..."


# ---------------------------------------------------------------------------------------------
# Problems


def load_history_problems(
    prepared: Path,
    limit: int | None = None,
    max_chars: int = 16_000,
    *,
    tests: bool = True,
) -> list[HistoryProblem]:
    """The benchmark's problems: every modified file of each repository's validation commits.

    `prepared` is the folder `zen-coder prepare` wrote for the model's training data: its
    manifest names the mined dataset and the exact split. Files over `max_chars` (before or
    after) are skipped: they do not fit a prompt. Problems are ordered by commit time within a
    repository and taken from the repositories in turn, so a `limit` samples every repository
    rather than the first one.
    With `tests`, each repository is opened (cloned or fetched for a URL) to find the test
    command of its Python files; `tests=False` needs only the prepared and mined datasets.
    """
    dataset, repositories = prepared_split(Path(prepared))
    sources = {entry["name"]: entry["source"] for entry in dataset.manifest.get("inputs", [])}
    per_repository = [
        _validation_modifications(dataset.shards[repository.key], repository.held_out, max_chars)
        for repository in repositories
    ]
    rows = list(_in_turn(per_repository))[:limit]
    commands = {source: _TestCommands(source) for source in sources.values() if tests and source}
    markers = read_tokenizer(Path(prepared)).role_tokens()
    return [_problem(row, sources.get(row["repo"]), commands, markers) for row in rows]


def _validation_modifications(shards: list[Path], held_out: set[str], max_chars: int) -> list[dict]:
    """The repository's modify records of the held-out commits, in commit-time order."""
    table = pa.concat_tables(read_shard(path, COLUMNS) for path in shards)
    keep = pc.and_(
        pc.equal(table["change_type"], "modify"),
        pc.is_in(table["commit"], value_set=pa.array(sorted(held_out), pa.string())),
    )
    rows = table.filter(keep).to_pylist()
    rows = [
        row
        for row in rows
        if row["old_content"] is not None
        and row["new_content"] is not None
        and max(len(row["old_content"]), len(row["new_content"])) <= max_chars
    ]
    return sorted(rows, key=lambda row: (row["committer_time"], row["commit"], row["path"]))


def _problem(
    row: dict, source: str | None, commands: dict[str, _TestCommands], markers: Mapping[str, str]
) -> HistoryProblem:
    tested = row["language"] == "Python" and source in commands
    return HistoryProblem(
        task_id=f"{row['repo']}@{row['commit'][:12]}:{row['path']}",
        repo=row["repo"],
        commit=row["commit"],
        parent=row["parent"],
        path=row["path"],
        language=row["language"] or "",
        message=row["message"],
        before=row["old_content"],
        after=row["new_content"],
        diff=row["diff"],
        source=source,
        test_command=commands[source].for_file(row["commit"], row["path"]) if tested else None,
        markers=markers,
    )


def _in_turn(groups: list[list[dict]]) -> Iterable[dict]:
    """The first item of every group, then the second of every group, and so on."""
    for rank in range(max((len(group) for group in groups), default=0)):
        for group in groups:
            if rank < len(group):
                yield group[rank]


class _TestCommands:
    """The pytest command of a file at a commit, from the repository's tree at that commit."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.trees: dict[str, frozenset[str]] = {}

    def for_file(self, commit: str, path: str) -> tuple[str, ...] | None:
        if commit not in self.trees:
            self.trees[commit] = self._tree(commit)
        files = self.trees[commit]
        root = _project_root(path, files.__contains__)
        tests = sorted(name for name in files if _is_test_file(name, root))
        return (*PYTEST, *tests) if tests else None

    def _tree(self, commit: str) -> frozenset[str]:
        try:
            git_dir = _git_dir(self.source)
        except ZenCoderError as exc:
            raise ZenCoderError(f"{exc} (needed for its tests; {WITHOUT_TESTS})") from None
        result = subprocess.run(
            ["git", f"--git-dir={git_dir}", "ls-tree", "-r", "-z", "--name-only", commit],
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise ZenCoderError(
                f"{self.source} lacks the mined commit {commit[:12]}: pass the repository it was "
                f"mined from, or {WITHOUT_TESTS}"
            )
        return frozenset(name for name in result.stdout.decode().split("\0") if name)


@cache
def _git_dir(source: str) -> Path:
    """The repository a source names: a local path as is, a URL through mine's clone cache."""
    return resolve(RepoSpec(source), user_cache_dir() / "repos").git_dir


def _project_root(path: str, exists: Callable[[str], bool]) -> PurePosixPath:
    """The nearest folder above `path` that holds a Python project or pytest file; else the root
    (the repository's root is `.`)."""
    for folder in PurePosixPath(path).parents:
        if any(exists(str(folder / marker)) for marker in PROJECT_MARKERS):
            return folder
    return PurePosixPath(".")


def _is_test_file(name: str, root: PurePosixPath) -> bool:
    """Whether pytest would collect `name` when given the project at `root`."""
    path = PurePosixPath(name)
    if root not in path.parents:
        return False
    folders = path.parent.relative_to(root).parts
    if any(fnmatch.fnmatch(folder, skipped) for folder in folders for skipped in SKIPPED_DIRS):
        return False
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in TEST_FILES)


# ---------------------------------------------------------------------------------------------
# Prompts and completions


def history_prompt(problem: HistoryProblem, template: str) -> str:
    """What the model sees: the file before the commit and the commit message."""
    fields = {
        "repo": problem.repo,
        "path": problem.path,
        "language": problem.language,
        "before": problem.before,
        "message": problem.message,
        "fence": _fence_for(problem.before),
        "info": problem.language.lower().replace(" ", ""),
    }
    spelled = _ROLE.sub(lambda role: _literal(problem.markers[role.group()]), _template(template))
    return spelled.format(**fields)


def _literal(text: str) -> str:
    """`text` as it reads in a template for str.format."""
    return text.replace("{", "{{").replace("}", "}}")


def stop_sequences(template: str, markers: Mapping[str, str] = OWN_MARKERS) -> tuple[str, ...]:
    """Where a completion for `template` ends, each role as `markers` spell it."""
    _template(template)
    return tuple(markers[role] for role in _STOP[template])


def extract_file(completion: str, template: str, markers: Mapping[str, str] = OWN_MARKERS) -> str:
    """The file a completion proposes.

    A native model writes the file and stops at its EOS; anything after a role's token (as
    `markers` spell them) is not the file. A plain-template model answers with fenced blocks:
    the longest one is taken, as chat models sometimes quote a snippet before the whole file; an
    unclosed block (the answer ran out of tokens) counts up to the end, and an answer without a
    fence counts whole.
    """
    _template(template)
    if template == "zen-coder":
        return re.split("|".join(map(re.escape, markers.values())), completion, maxsplit=1)[0]
    blocks = [match.group(2) for match in _FENCED.finditer(completion)]
    return max(blocks, key=len) if blocks else completion


def _template(name: str) -> str:
    if name not in PROMPT_TEMPLATES:
        known = ", ".join(PROMPT_TEMPLATES)
        raise ZenCoderError(f"unknown history prompt template {name!r}; use one of: {known}")
    return PROMPT_TEMPLATES[name]


def _fence_for(text: str) -> str:
    """A backtick fence longer than any run of backticks in `text`, so the file cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


# ---------------------------------------------------------------------------------------------
# Similarity


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer text, over characters (1.0: equal).

    Characters, not lines: most commits change a few characters of a few lines, and a line
    measure would score a one-character fix as wrong as rewriting the line. It is also the
    edit similarity of CodeXGLUE and RepoBench, so numbers compare.
    """
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def levenshtein(a: str, b: str) -> int:
    """Character edit distance, by Myers' bit-parallel algorithm (Hyyrö's formulation).

    The shared prefix and suffix are dropped first (a good answer shares most of the file); the
    rest costs one pass over `b` with a few operations on len(a)-bit integers, so two unrelated
    16,000-character files take about 0.1 s where the textbook table would take minutes.
    """
    start = _shared_prefix(a, b)
    a, b = a[start:], b[start:]
    end = _shared_prefix(a[::-1], b[::-1])
    a, b = a[: len(a) - end], b[: len(b) - end]
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return len(b)
    positions: dict[str, int] = {}
    for index, char in enumerate(a):
        positions[char] = positions.get(char, 0) | (1 << index)
    mask = (1 << len(a)) - 1
    last = 1 << (len(a) - 1)
    plus, minus, distance = mask, 0, len(a)  # vertical deltas of the column: +1 / -1
    for char in b:
        equal = positions.get(char, 0)
        vertical = equal | minus
        horizontal = ((((equal & plus) + plus) & mask) ^ plus) | equal
        horizontal_plus = minus | (~(horizontal | plus) & mask)
        horizontal_minus = plus & horizontal
        if horizontal_plus & last:
            distance += 1
        elif horizontal_minus & last:
            distance -= 1
        horizontal_plus = ((horizontal_plus << 1) | 1) & mask
        horizontal_minus = (horizontal_minus << 1) & mask
        plus = horizontal_minus | (~(vertical | horizontal_plus) & mask)
        minus = horizontal_plus & vertical
    return distance


def _shared_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection on slice comparisons (done in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


# ---------------------------------------------------------------------------------------------
# Scoring


def score(
    problem: HistoryProblem,
    completion: str,
    template: str,
    sandbox_slot: int = 0,
    *,
    python: str | None = None,
    limits: Limits = TEST_LIMITS,
) -> HistoryScore:
    """Score one completion. Tests run in sandbox slot `sandbox_slot` with `python` (default:
    this interpreter), which must have pytest and the project's dependencies installed."""
    proposed = extract_file(completion, template, problem.markers)
    normalized = normalize(proposed)
    exact = normalized == problem.after
    similarity = edit_similarity(normalized, problem.after)
    tests = None
    if problem.test_command is not None:
        tests = _test_outcome(
            problem, proposed, exact, sandbox_slot, python or sys.executable, limits
        )
    return HistoryScore(exact, similarity, tests)


def _test_outcome(
    problem: HistoryProblem, proposed: str, exact: bool, slot: int, python: str, limits: Limits
) -> str:
    reference = _reference_outcome(problem, slot, python, limits)
    if reference != "passed":
        return "reference_failed" if reference == "failed" else reference
    if exact:  # the same checkout as the reference's, which passed
        return "passed"
    return _run_tests(problem, proposed, slot, python, limits)


_reference_outcomes: dict[tuple, str] = {}


def _reference_outcome(problem: HistoryProblem, slot: int, python: str, limits: Limits) -> str:
    """The tests' outcome on the commit's own checkout, once per commit and command."""
    key = (problem.source, problem.commit, problem.test_command, python, limits)
    if key not in _reference_outcomes:
        _reference_outcomes[key] = _run_tests(problem, None, slot, python, limits)
    return _reference_outcomes[key]


def _run_tests(
    problem: HistoryProblem, replacement: str | None, slot: int, python: str, limits: Limits
) -> str:
    """Check the commit out into a sandbox, put `replacement` (if any) in the problem's file and
    run its test command: "passed", "failed" or "error: ..."."""
    if problem.source is None or problem.test_command is None:
        return "error: the problem names no repository or test command"
    with Sandbox(slot) as sandbox:
        try:
            _check_out(_git_dir(problem.source), problem.commit, sandbox.path)
        except (ZenCoderError, OSError) as exc:
            return f"error: cannot check out {problem.commit[:12]}: {exc}"
        if replacement is not None:
            sandbox.write(problem.path, replacement)
        _give_to_sandbox_user(sandbox.path)
        command = [python if part == "python" else part for part in problem.test_command]
        env = {"PYTHONPATH": os.pathsep.join(_import_paths(sandbox.path, problem.path))}
        try:
            completed = sandbox.run(command, limits, env=env)
        except ZenCoderError as exc:
            return f"error: {exc}"
    if completed.status == "exited" and completed.returncode == 0:
        return "passed"
    return "failed"


def _check_out(git_dir: Path, commit: str, target: Path) -> None:
    """Check the commit's tree out into `target` as a clone would, through a private index.

    Not `git archive`: it would leave out the files a `.gitattributes` marks `export-ignore`,
    tests among them in some projects.
    """
    with tempfile.TemporaryDirectory(prefix="zen-coder-index-") as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        for step in (["read-tree", commit], [f"--work-tree={target}", "checkout-index", "--all"]):
            result = subprocess.run(
                ["git", f"--git-dir={git_dir}", *step],
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                message = result.stderr.strip() or f"git exit status {result.returncode}"
                raise ZenCoderError(message.splitlines()[-1])


def _give_to_sandbox_user(root: Path) -> None:
    """Make the checkout the sandbox user's, as the sandbox folder itself is, so tests can write
    next to their files (caches, fixtures) as they would in a developer's clone."""
    if os.geteuid() != 0:
        return
    owner = root.stat()
    for folder, folders, files in os.walk(root):
        for name in [*folders, *files]:
            os.chown(os.path.join(folder, name), owner.st_uid, owner.st_gid, follow_symlinks=False)


def _import_paths(checkout: Path, path: str) -> list[str]:
    """Where the project's modules import from: the repository root, the project's root and its
    `src/` folder (src layout), as an editable install would put them."""
    root = checkout / _project_root(path, lambda name: (checkout / name).is_file())
    folders = [checkout, root, root / "src"]
    return list(dict.fromkeys(str(folder) for folder in folders if folder.is_dir()))
