"""The time channel at inference on a real git repository: the edited file's lines carry the
history position `zen-coder mine` records for the commit that last changed each of them, typed
lines the next position at every keystroke, and two keystrokes' prompts share their times over
their shared start (what the engine's prefix cache compares)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gitrepo import GitRepo
from tests.history.test_mine import read_records
from tests.models import tokenizer_folder  # noqa: F401 - a fixture
from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.inference.prompts import Budget, PromptFormat
from zen_coder.inference.repository import RepositoryContext

FIRST = "def area(r):\n    return 3 * r * r\n\n\ndef side(s):\n    return s\n"
SECOND = FIRST.replace("3 * r", "3.14 * r")
RENAMED = SECOND + "\n\ndef perimeter(r):\n    return 2 * 3.14 * r\n"
HEAD = RENAMED.replace("return s\n", "return s * s\n")


def build(path: Path) -> tuple[GitRepo, dict[str, str]]:
    """A file whose lines come from four commits, one of them a rename, with a commit of
    another file in between; the commits by name."""
    repo = GitRepo(path)
    commits = {}
    repo.write("pkg/shapes.py", FIRST)
    repo.write("pkg/notes.py", "NOTES = []\n")
    commits["first"] = repo.commit("Add shapes")
    repo.write("pkg/notes.py", "NOTES = ['circles']\n")
    repo.commit("Note circles")
    repo.write("pkg/shapes.py", SECOND)
    commits["second"] = repo.commit("A closer pi")
    repo.move("pkg/shapes.py", "pkg/circle.py")
    repo.write("pkg/circle.py", RENAMED)
    commits["renamed"] = repo.commit("Circles get their own module, with a perimeter")
    repo.write("pkg/circle.py", HEAD)
    commits["head"] = repo.commit("Square sides")
    return repo, commits


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> tuple[GitRepo, dict[str, int]]:
    """The repository and, per commit name, the file's history position mining records."""
    root = tmp_path_factory.mktemp("ages")
    repo, commits = build(root / "shapes")
    config = MineConfig(dedup_exact=False, dedup_near=False)
    mine([RepoSpec(str(repo.path))], root / "out", config, workers=1, salt=b"salt")
    by_commit = {
        record["commit"]: record["history_position"]
        for record in read_records(root / "out")
        if record["path"] in ("pkg/shapes.py", "pkg/circle.py")
    }
    return repo, {name: by_commit[sha] for name, sha in commits.items()}


@pytest.fixture(scope="module")
def zen(tokenizer_folder) -> RoleTokenizer:  # noqa: F811 - the fixture imported above
    return read_tokenizer(tokenizer_folder)


def expected_head_ages(positions: dict[str, int]) -> list[int]:
    """HEAD's lines, each at the position of the commit that last changed it."""
    first, second, renamed, head = (positions[n] for n in ("first", "second", "renamed", "head"))
    return [first, second, first, first, first, head, renamed, renamed, renamed, renamed]


def test_each_line_carries_the_position_mining_records_for_its_last_commit(mined):
    """Checked by hand to fail: with every line at the file's position (one time per file),
    and with the rename not carrying the file's changes along."""
    repo, positions = mined
    context = RepositoryContext(repo.path)
    context.refresh()
    assert len(set(positions.values())) == 4
    ages = context.ages("pkg/circle.py", HEAD)
    assert list(ages.lines) == expected_head_ages(positions)
    assert ages.header == positions["head"]  # the buffer is HEAD's version
    context.close()


def test_typed_lines_get_the_next_position_at_every_keystroke(mined, tmp_path, zen):
    """A line typed above the cursor's old neighbours leaves theirs as they were; the typed line
    is at the file's position + 1 in both keystrokes, and so is the header, so the second
    prompt's times equal the first's over their shared start. Committing the line moves HEAD:
    the line then has its commit's position. Checked by hand to fail: with the typed time
    counting the buffer's characters (a time that moves with each key), and with lines matched
    to HEAD's by number rather than by diff."""
    repo, positions = mined
    clone = GitRepo.clone(repo, tmp_path / "clone")
    context = RepositoryContext(clone.path)
    context.refresh()
    lines = HEAD.splitlines(keepends=True)
    above, below = "".join(lines[:2]), "".join(lines[2:])
    typed = positions["head"] + 1
    expected = expected_head_ages(positions)
    expected = [*expected[:2], typed, *expected[2:]]
    form = PromptFormat.from_tokenizer(zen)
    budget = Budget(tokens=4000)
    encoded = []
    for word in ("    # sq", "    # squ"):
        ages = context.ages("pkg/circle.py", above + word + "\n" + below)
        assert list(ages.lines) == expected and ages.header == typed
        parts = context.prompt_parts(above + word, "\n" + below, "pkg/circle.py", None, budget)
        assert parts.ages == ages
        encoded.append(form.build(parts, budget, len).ids_and_times(zen.tokenizer))
    (ids, times), (next_ids, next_times) = encoded
    shared = next(i for i, (a, b) in enumerate(zip(ids, next_ids, strict=False)) if a != b)
    assert shared > len(ids) // 2
    assert times[:shared] == next_times[:shared]
    assert {*expected, typed} <= set(times)  # with the history block and snippets

    clone.write("pkg/circle.py", above + "    # square\n" + below)
    clone.commit("Say what it is")
    context.refresh()
    committed = context.ages("pkg/circle.py", above + "    # square\n" + below)
    assert list(committed.lines) == [*expected[:2], typed, *expected[3:]]
    assert committed.header == typed == context.time_of("pkg/circle.py")
    context.close()
