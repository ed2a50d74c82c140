"""The zen-coder model folder: what it holds, what reads back, the language and repository
tables it carries."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from zen_coder.errors import ZenCoderError
from zen_coder.model.config import preset
from zen_coder.model.folder import (
    CONFIG_FILE,
    LANGUAGES_FILE,
    REPOS_FILE,
    TABLE_BEFORE_LANGUAGES_FILE,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
    is_model_folder,
    load_model,
    read_languages,
    read_repos,
    save_model,
)
from zen_coder.model.model import ZenCoder

TABLE = ["<unknown>", "Python", "Go", "Rust"]
REPOS = ["<unknown>", "attrs", "click", "flask"]
CONFIG = dataclasses.replace(
    preset("tiny").with_techniques(),
    vocab_size=256,
    n_layers=2,
    n_experts=4,
    experts_per_token=2,
    n_languages=4,
    n_repos=4,
)


def one_line_error(function, *args, **kwargs) -> str:
    with pytest.raises(ZenCoderError) as error:
        function(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def model_with_language_rows(config=CONFIG) -> ZenCoder:
    """A model whose language and repository rows all differ (a new model's are all zero)."""
    torch.manual_seed(0)
    model = ZenCoder(config)
    with torch.no_grad():
        model.repo.weight.normal_()
        for block in model.blocks:
            block.moe.language.normal_()
    return model


def save(folder, config=CONFIG, languages=TABLE, tokenizer=None, repos=REPOS, weights=None):
    weights = model_with_language_rows(config).state_dict() if weights is None else weights
    save_model(folder, config, weights, languages, tokenizer, repos=repos)


@pytest.fixture
def folder(tmp_path, tokenizer_folder):
    folder = tmp_path / "model"
    save(folder, tokenizer=tokenizer_folder)
    return folder


def test_a_saved_model_reads_back_whole(folder):
    files = sorted(path.name for path in folder.iterdir())
    expected_files = [CONFIG_FILE, WEIGHTS_FILE, LANGUAGES_FILE, REPOS_FILE, *TOKENIZER_FILES]
    assert files == sorted(expected_files)
    loaded = load_model(folder)
    assert loaded.config == CONFIG and not loaded.training
    expected = model_with_language_rows().state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    assert read_languages(folder) == TABLE and read_repos(folder) == REPOS


def test_the_technique_switches_and_tables_survive_a_round_trip(tmp_path, tokenizer_folder):
    """The native format keeps all four techniques: each switch as saved (two on, two off
    here, so a default read back would fail) and the tables that give the rows their names."""
    config = dataclasses.replace(CONFIG, temporal_attention=False, contrastive_loss=False)
    folder = tmp_path / "model"
    save(folder, config=config, tokenizer=tokenizer_folder)
    loaded = load_model(folder)
    assert loaded.config.techniques == {
        "repo_embeddings": True,
        "temporal_attention": False,
        "language_routing": True,
        "contrastive_loss": False,
    }
    assert read_languages(folder) == TABLE and read_repos(folder) == REPOS
    expected = model_with_language_rows(config)
    assert torch.equal(loaded.repo.weight, expected.repo.weight)


def test_a_save_interrupted_midway_leaves_no_model(folder, tmp_path):
    """Saving over a model stops after the weights (the tokenizer is missing): the folder no
    longer claims to hold a model. (Broken by hand, keeping the old config until the end, the
    folder still looked like a model.)"""
    with pytest.raises(FileNotFoundError):
        save(folder, tokenizer=tmp_path / "no-tokenizer")
    assert (folder / WEIGHTS_FILE).exists() and not is_model_folder(folder)


def test_language_rows_follow_their_names_into_another_table(folder):
    """Fine-tuning on data with another table: each language keeps its row under its new id, a
    new one starts at zero. (Broken by hand, loading the rows unchanged fails on row 1.)"""
    rows = [block.moe.language for block in model_with_language_rows().blocks]
    other = ["<unknown>", "Rust", "Zig", "Python", "Lua"]
    moved = load_model(folder, languages=other)
    assert moved.config.n_languages == len(other)
    for block, before in zip(moved.blocks, rows, strict=True):
        assert torch.equal(block.moe.language[0], before[0])
        assert torch.equal(block.moe.language[1], before[TABLE.index("Rust")])
        assert torch.equal(block.moe.language[3], before[TABLE.index("Python")])
        assert not block.moe.language[[2, 4]].any()


def test_repository_rows_follow_their_names_into_another_table(folder):
    """A fine-tuning run's data with other repositories: each keeps its embedding under its new
    id, a new one starts at zero, and the table's size is the data's. (Broken by hand, loading
    the rows by id, row 1 holds attrs' embedding instead of flask's.)"""
    rows = model_with_language_rows().repo.weight.detach()
    other = ["<unknown>", "flask", "django", "attrs"]
    moved = load_model(folder, repos=other)
    assert moved.config.n_repos == len(other)
    table = moved.repo.weight.detach()
    assert torch.equal(table[0], rows[0])
    assert torch.equal(table[1], rows[REPOS.index("flask")])
    assert torch.equal(table[3], rows[REPOS.index("attrs")])
    assert not table[2].any()


def test_a_folder_from_before_the_repository_table_starts_its_repositories_at_zero(folder):
    (folder / REPOS_FILE).unlink()
    with pytest.warns(UserWarning, match=f"{folder} has no repos.json .* start at zero"):
        moved = load_model(folder, repos=REPOS)
    assert not moved.repo.weight.any()
    assert moved.blocks[0].moe.language.any()  # the language table is still known
    assert load_model(folder).repo.weight.any()  # read as it is, the folder keeps its rows


def test_a_folder_from_before_the_language_table_reads_the_table_of_its_time(
    tmp_path, tokenizer_folder
):
    """Folders written before languages.json hold only the config, the weights and the
    tokenizer; they were all trained with the prepared data's order of that time."""
    config = dataclasses.replace(CONFIG, n_languages=len(TABLE_BEFORE_LANGUAGES_FILE))
    folder = tmp_path / "old"
    model = model_with_language_rows(config)
    save(folder, config, TABLE_BEFORE_LANGUAGES_FILE, tokenizer_folder, weights=model.state_dict())
    (folder / LANGUAGES_FILE).unlink()
    with pytest.warns(UserWarning, match=f"{folder} has no languages.json .* Copy the"):
        assert read_languages(folder) == list(TABLE_BEFORE_LANGUAGES_FILE)
    assert torch.equal(load_model(folder).blocks[0].moe.language, model.blocks[0].moe.language)
    config_path = folder / CONFIG_FILE
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), n_languages=5)))
    assert "has no languages.json and 5 language ids" in one_line_error(read_languages, folder)


def test_damaged_folders_are_one_line_errors(folder, tokenizer_folder):
    (folder / LANGUAGES_FILE).write_text(json.dumps(TABLE[:3]))
    message = one_line_error(read_languages, folder)
    assert f"{folder / LANGUAGES_FILE} does not fit the model: it needs 4 distinct" in message
    (folder / LANGUAGES_FILE).write_text("[")
    assert f"{folder / LANGUAGES_FILE} cannot be read" in one_line_error(read_languages, folder)
    unknown_not_first = ["Python", *TABLE[1:]]
    message = one_line_error(save, folder, CONFIG, unknown_not_first, tokenizer_folder)
    assert f"the language table for {folder} does not fit the model" in message
    message = one_line_error(save, folder, CONFIG, TABLE, tokenizer_folder, repos=REPOS[:2])
    assert f"the repository table for {folder} does not fit the model" in message
    (folder / REPOS_FILE).write_text(json.dumps(["<unknown>", "attrs", "attrs", "flask"]))
    message = one_line_error(read_repos, folder)
    assert f"{folder / REPOS_FILE} does not fit the model: it needs 4 distinct" in message
    (folder / WEIGHTS_FILE).write_bytes(b"garbage")
    assert f"{folder / WEIGHTS_FILE} cannot be read" in one_line_error(load_model, folder)
    (folder / WEIGHTS_FILE).unlink()
    assert f"{folder / WEIGHTS_FILE} not found" in one_line_error(load_model, folder)
    (folder / CONFIG_FILE).write_text(json.dumps({"n_layers": 2, "colour": "blue"}))
    assert "not a zen-coder model config" in one_line_error(load_model, folder)
    (folder / CONFIG_FILE).unlink()
    assert "is not a zen-coder model" in one_line_error(load_model, folder)


def test_a_folder_from_before_the_experts_module_reads_back(folder):
    """Folders written before the experts became a submodule name them `blocks.N.moe.w1`.
    (Without the renaming on load, this fails with "tensor blocks.0.moe.w1 does not fit".)"""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / WEIGHTS_FILE)
    old = {name.replace(".moe.experts.", ".moe."): tensor for name, tensor in weights.items()}
    assert any(name.endswith(".moe.w1") for name in old)
    save_file(old, folder / WEIGHTS_FILE)
    loaded = load_model(folder).state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
