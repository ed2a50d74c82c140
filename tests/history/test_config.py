"""Mining settings: defaults, a TOML [mine] table, --set overrides, and clear errors."""

from __future__ import annotations

import pytest

from zen_coder.errors import ZenCoderError
from zen_coder.history.config import MineConfig, load_config


def test_defaults_are_the_recommended_recipe():
    config = load_config()
    assert config == MineConfig()
    assert (config.max_files_per_commit, config.max_diff_chars_per_commit) == (16, 43_000)
    assert (config.minhash_permutations, config.shingle_size) == (256, 5)
    assert config.near_dup_threshold == 0.7


def test_toml_then_command_line(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[mine]\nmax_files_per_commit = 32\ndedup_near = false\n[train]\nlr = 1\n")
    config = load_config(recipe, ["max_files_per_commit=64", "near_dup_threshold=0.8"])
    assert config.max_files_per_commit == 64
    assert config.dedup_near is False
    assert config.near_dup_threshold == 0.8
    assert "commits_per_batch" not in config.content_settings()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("max_files=3", "unknown mine setting 'max_files'"),
        ("dedup_near=maybe", "mine setting dedup_near expects true or false, got 'maybe'"),
        ("max_file_bytes=big", "mine setting max_file_bytes expects an integer, got 'big'"),
        ("max_files_per_commit=0", "mine setting max_files_per_commit must be at least 1"),
        ("near_dup_threshold=1.5", "near_dup_threshold must be between 0 and 1"),
        ("no-equals-sign", "--set expects key=value"),
    ],
)
def test_bad_settings_name_the_setting(assignment, message):
    with pytest.raises(ZenCoderError, match=message):
        load_config(None, [assignment])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ZenCoderError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[mine\n")
    with pytest.raises(ZenCoderError, match="is not valid TOML"):
        load_config(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("mine = 3\n")
    with pytest.raises(ZenCoderError, match=r"\[mine\] must be a table"):
        load_config(wrong)
