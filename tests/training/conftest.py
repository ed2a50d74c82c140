"""Prepared data from a real git history, shared by the trainer's tests (read only)."""

from pathlib import Path

import pytest

from tests.data.test_prepare import build_history, mined
from zen_coder.data.config import PrepareConfig
from zen_coder.data.pipeline import prepare

SMALL_DATA = PrepareConfig(vocab_size=600, context_length=64, tokenizer_train_chars=1_000_000)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    repo = build_history(root / "repo", commits=30)
    out = root / "prepared"
    prepare(mined(root, repo), out, SMALL_DATA, benchmarks=[])
    return out
