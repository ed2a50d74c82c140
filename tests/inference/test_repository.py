"""Repository context on real git repositories: chunks, retrieval, incremental refresh, and the
repository name, history positions and changes exactly as `zen-coder mine` records them."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from tests.gitrepo import GitRepo
from tests.history.test_mine import read_records
from tests.shared import SHARED
from zen_coder.errors import ZenCoderError
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.inference.prompts import Budget, PromptFormat
from zen_coder.inference.repository import Chunker, RepositoryContext, words

GEOMETRY = '''"""Shapes."""

import math


def area(radius):
    return math.pi * radius**2


def perimeter(radius):
    return 2 * math.pi * radius
'''
CONFIG = '''import json


def parse_config(path):
    """Read the settings file."""
    with open(path) as handle:
        return json.load(handle)
'''


def build(path: Path) -> GitRepo:
    """Five kinds of history: edits, a rename with an edit, a merge of a side branch, a file
    deleted and added again."""
    repo = GitRepo(path)
    repo.write("pkg/geometry.py", GEOMETRY)
    repo.write("pkg/util.py", CONFIG)
    repo.write("README.md", "# Shapes\n\nCircles only.\n")
    repo.commit("Add geometry and config reading")
    repo.write("pkg/geometry.py", GEOMETRY + "\n\ndef diameter(radius):\n    return 2 * radius\n")
    repo.commit("Add the diameter of a circle")
    repo.move("pkg/util.py", "pkg/config.py")
    repo.write("pkg/config.py", CONFIG.replace("handle", "stream"))
    repo.commit("Move config reading to its own module")
    repo.git("checkout", "-q", "-b", "side")
    repo.write("pkg/config.py", CONFIG.replace("handle", "stream") + "\n\nDEFAULT = {}\n")
    repo.commit("Give the settings a default")
    repo.git("checkout", "-q", "main")
    repo.write("pkg/geometry.py", GEOMETRY.replace("Shapes", "Circle measures"))
    repo.commit("Describe the module")
    repo.merge("side", "Merge the default settings")
    repo.remove("README.md")
    repo.commit("Drop the readme for now")
    repo.write("README.md", "# Circle measures\n\nArea, perimeter, diameter.\n")
    repo.commit("Bring the readme back with the new scope")
    return repo


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> tuple[GitRepo, list[dict]]:
    root = tmp_path_factory.mktemp("mined")
    repo = build(root / "shapes")
    config = MineConfig(dedup_exact=False, dedup_near=False)
    mine([RepoSpec(str(repo.path))], root / "out", config, workers=1, salt=b"salt")
    return repo, read_records(root / "out")


def test_positions_names_and_changes_are_what_mining_records(mined):
    """(Checked to fail with renames not carrying a file's count.)"""
    repo, records = mined
    context = RepositoryContext(repo.path)
    context.refresh()
    assert {record["repo"] for record in records} == {context.repo_name()} == {"shapes"}
    newest: dict[str, int] = {}
    for record in records:
        if record["path"] == "pkg/util.py":
            continue  # renamed away
        newest[record["path"]] = max(newest.get(record["path"], 0), record["history_position"])
    assert newest == {path: context.time_of(path) for path in newest}
    assert newest["README.md"] == 3 and newest["pkg/config.py"] == 3  # deleted, renamed

    by_commit = {(r["commit"], r["path"]): r for r in records}
    changes = context.changes("pkg/config.py", 10)
    assert [change.time for change in changes] == [3, 2, 1]
    for change in changes:
        record = (
            by_commit.get((change.commit, "pkg/config.py"))
            or by_commit[(change.commit, "pkg/util.py")]
        )
        assert (change.message, change.diff, change.time) == (
            record["message"],
            record["diff"],
            record["history_position"],
        )
    assert len(context.changes("pkg/config.py", 2)) == 2
    context.close()


def test_the_time_counts_an_uncommitted_change_as_the_next(mined, tmp_path):
    repo, _ = mined
    clone = GitRepo.clone(repo, tmp_path / "clone")
    context = RepositoryContext(clone.path)
    context.refresh()
    assert context.time_of("pkg/geometry.py") == 3
    (clone.path / "pkg/geometry.py").write_text(GEOMETRY + "# more\n")
    (clone.path / "pkg/new.py").write_text("X = 1\n")
    assert context.time_of("pkg/geometry.py") == 4
    assert context.time_of("pkg/new.py") == 1


def test_the_name_is_the_remote_mining_would_name_unless_the_model_knows_the_path(mined, tmp_path):
    repo, _ = mined
    clone = GitRepo.clone(repo, tmp_path / "work")
    clone.git("remote", "set-url", "origin", "https://user:secret@github.com/org/shapes.git")
    assert RepositoryContext(clone.path).repo_name() == "org/shapes"
    assert RepositoryContext(clone.path, known_repos=["<unknown>", "work"]).repo_name() == "work"
    assert RepositoryContext(clone.path, name="mine/own").repo_name() == "mine/own"


def test_refresh_rechunks_only_changed_files_and_walks_only_new_commits(mined, tmp_path):
    """(Checked to fail when every refresh re-chunks every file.)"""
    repo, _ = mined
    clone = GitRepo.clone(repo, tmp_path / "clone")
    context = RepositoryContext(clone.path)
    first = context.refresh()
    assert (first.files, first.chunked, first.removed) == (3, 3, 0)
    assert first.commits == 8  # the merge commit too
    again = context.refresh()
    assert (again.chunked, again.removed, again.commits) == (0, 0, 0)

    (clone.path / "pkg/geometry.py").write_text(GEOMETRY + "\n\ndef volume_of_sphere(r):\n")
    (clone.path / "pkg/config.py").touch()  # newer, same content: read, not chunked
    (clone.path / "README.md").unlink()
    edited = context.refresh()
    assert (edited.files, edited.chunked, edited.removed) == (2, 1, 1)
    assert context.snippets(None, "volume_of_sphere(", "", 1000)[0].path == "pkg/geometry.py"

    clone.git("checkout", "-q", "--", "README.md")
    clone.write("pkg/geometry.py", GEOMETRY)
    clone.commit("Back to area and perimeter")
    walked = context.refresh()
    assert walked.commits == 1
    assert context.time_of("pkg/geometry.py") == 4

    clone.git("reset", "-q", "--hard", "HEAD~2")  # history rewritten: walked again from the root
    rewritten = context.refresh()
    assert rewritten.commits == 7
    fresh = RepositoryContext(clone.path)
    fresh.refresh()
    for path in ("pkg/geometry.py", "pkg/config.py", "README.md"):
        assert context.time_of(path) == fresh.time_of(path)


def test_snippets_come_from_other_files_best_first_within_the_limit(mined, tmp_path):
    repo, _ = mined
    clone = GitRepo.clone(repo, tmp_path / "clone")
    (clone.path / "app.py").write_text("from pkg.config import parse_config\n")
    context = RepositoryContext(clone.path)
    context.refresh()
    prefix = "settings = parse_config("
    found = context.snippets("app.py", prefix, ")\n", 2000)
    assert found[0].path == "pkg/config.py" and "def parse_config" in found[0].text
    assert all(s.path != "app.py" for s in found)
    assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)
    assert sum(len(s.text) for s in context.snippets("app.py", prefix, "", 150)) <= 150
    assert context.snippets("app.py", "", "", 2000) == []


def test_chunks_follow_definitions_and_stay_under_the_size():
    """A class too big for one chunk is cut between its methods; small definitions are joined.
    (Checked to fail with chunks cut every N lines.)"""
    methods = "".join(
        f"    def method_{i}(self):\n        return {i} * self.value + {i}\n\n" for i in range(12)
    )
    source = f"import os\n\n\nclass Big:\n{methods}\n\ndef small():\n    return 1\n"
    chunks = Chunker(300).chunks("m.py", source, "Python")
    assert all(len(chunk.text) <= 300 for chunk in chunks)
    assert "".join(c.text for c in chunks).strip() == source.strip()
    assert len(chunks) > 2
    assert all(c.text.lstrip().startswith(("def method_", "import os")) for c in chunks)


def test_words_split_identifiers():
    assert words("parseConfig(HTTPServer, max_len)") == [
        "parseconfig",
        "parse",
        "config",
        "httpserver",
        "http",
        "server",
        "max_len",
        "max",
        "len",
    ]


def test_a_directory_that_is_no_checkout_is_a_one_line_error(tmp_path):
    with pytest.raises(ZenCoderError, match="not a git checkout"):
        RepositoryContext(tmp_path)
    with pytest.raises(ZenCoderError, match="no such directory"):
        RepositoryContext(tmp_path / "missing")


@pytest.mark.shared_data
def test_a_real_repository_indexes_and_answers(tmp_path):
    bundle = SHARED / "repos" / "attrs.bundle"
    subprocess.run(["git", "clone", "-q", str(bundle), str(tmp_path / "attrs")], check=True)
    context = RepositoryContext(tmp_path / "attrs")
    stats = context.refresh()
    assert stats.files > 50 and stats.chunks > stats.files and stats.commits > 1000
    prefix = "def test_builder():\n    builder = _ClassBuilder(\n"
    found = context.snippets("tests/test_new.py", prefix, "", 3000)
    assert "_ClassBuilder(" in found[0].text
    assert any(s.path == "src/attr/_make.py" and "_ClassBuilder(" in s.text for s in found)
    assert context.changes("src/attr/_make.py", 3)[0].time == context.time_of("src/attr/_make.py")


def test_a_request_gets_the_repository_name_snippets_and_history_in_its_prompt(mined, tmp_path):
    """From an editor's absolute path to the prompt the model was trained on."""
    repo, _ = mined
    clone = GitRepo.clone(repo, tmp_path / "clone")
    context = RepositoryContext(clone.path, name="org/shapes")
    context.refresh()
    budget = Budget(tokens=2000)
    parts = context.prompt_parts(
        "from pkg.config import parse_config\n\nsettings = parse_config(",
        ")\n",
        str(clone.path / "pkg" / "app.py"),
        "python",
        budget,
    )
    assert (parts.path, parts.repo) == ("pkg/app.py", "org/shapes")
    assert parts.snippets[0].path == "pkg/config.py" and parts.changes == []
    text = PromptFormat.from_family("zen-coder").build(parts, budget, len).text
    assert "<|repo|>org/shapes<|path|>pkg/config.py<|lang|>Python<|after|>" in text
    history = context.prompt_parts("x", "", "pkg/config.py", None, budget, history=2).changes
    assert [change.time for change in history] == [3, 2]


def test_watching_refreshes_in_the_background_until_closed(mined, tmp_path):
    repo, _ = mined
    clone = GitRepo.clone(repo, tmp_path / "clone")
    context = RepositoryContext(clone.path)
    context.watch(0.01)  # the first refresh too
    (clone.path / "pkg" / "spheres.py").write_text("def sphere_volume(radius):\n    return 4\n")
    for _ in range(3000):  # a wait for the refresh, not a timing threshold
        if context.snippets(None, "sphere_volume(", "", 500):
            break
        threading.Event().wait(0.01)
    assert context.snippets(None, "sphere_volume(", "", 500)[0].path == "pkg/spheres.py"
    context.close()
    assert not context._watcher.is_alive()
