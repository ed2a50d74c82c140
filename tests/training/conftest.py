"""Prepared data from real git histories, shared by the trainer's tests (read only)."""

from pathlib import Path

import pytest

from tests.data.test_prepare import SALT, build_history, mined
from tests.gitrepo import GitRepo
from zen_coder.data.config import PrepareConfig
from zen_coder.data.pipeline import prepare
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec

SMALL_DATA = PrepareConfig(vocab_size=600, context_length=64, tokenizer_train_chars=1_000_000)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    repo = build_history(root / "repo", commits=30)
    out = root / "prepared"
    prepare(mined(root, repo), out, SMALL_DATA, benchmarks=[])
    return out


def go_history(path: Path, commits: int = 24) -> GitRepo:
    """A small Go project with a real history, unlike `build_history`'s Python one."""
    repo = GitRepo(path)
    for i in range(commits):
        body = "package shapes\n\n" + "".join(
            f"func Area{j}(width, height int) int {{\n\treturn width*height + {i * j}\n}}\n\n"
            for j in range(5)
        )
        repo.write(f"shapes/shape_{i % 3}.go", body)
        repo.commit(f"Grow area {i} of the shapes by the commit number")
    return repo


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory) -> Path:
    """Two repositories in two languages: the history techniques have something to tell."""
    root = tmp_path_factory.mktemp("mixed-data")
    python, go = build_history(root / "python", commits=30), go_history(root / "go")
    mine([RepoSpec(str(python.path)), RepoSpec(str(go.path))], root / "mined", workers=1, salt=SALT)
    prepare(root / "mined", root / "prepared", SMALL_DATA, benchmarks=[])
    return root / "prepared"
