"""The zen-coder model folder (a run's `model/`): its files, how it is written and read back.

    zen_coder_config.json   the `ModelConfig`, written last: a folder holding it is complete
    model.safetensors       the weights, whole tensors
    languages.json          the language table the model was trained with (list index = the
                            language id, 0 = "<unknown>"), a copy of the prepared data's
    repos.json              the repository table, likewise (list index = the repository id)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   the data's tokenizer

The tables travel with the weights because the language routing and the repository embeddings
have one row per id: a model read with any other table (the mining stage's list reordered or
extended since, a fine-tuning run's data with other repositories) would give each language or
repository another one's row, and nothing would say so.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from zen_coder.errors import ZenCoderError
from zen_coder.files import write_atomic, write_bytes_atomic, write_json_atomic
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder
from zen_coder.model.weights import (
    Checkpoint,
    Rows,
    Source,
    Stored,
    build,
    filled_weights,
    grow_vocabulary,
)

CONFIG_FILE = "zen_coder_config.json"
WEIGHTS_FILE = "model.safetensors"
LANGUAGES_FILE = "languages.json"
REPOS_FILE = "repos.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
UNKNOWN = "<unknown>"  # id 0 of the language and the repository table
LANGUAGE_ROWS = ".moe.language"  # the name ending of each block's language-routing table
REPOSITORY_ROWS = "repo.weight"  # the repository embeddings
TIED_HEAD = "head.weight"  # with tie_embeddings, the embedding itself

# The table of every model folder written before languages.json existed: the prepared data's
# order then, ["<unknown>", *zen_coder.history.languages.LANGUAGES] as that list stood. Frozen
# here so those folders keep their meaning whatever later happens to the mining stage's list.
TABLE_BEFORE_LANGUAGES_FILE = (
    UNKNOWN,
    "Python",
    "TypeScript",
    "JavaScript",
    "Go",
    "Rust",
    "Solidity",
    "Java",
    "Kotlin",
    "C",
    "C++",
    "C#",
    "Ruby",
    "PHP",
    "Swift",
    "Scala",
    "Shell",
    "SQL",
    "HTML",
    "CSS",
    "Lua",
    "Haskell",
    "Elixir",
    "Dart",
    "R",
    "Julia",
    "Zig",
    "YAML",
    "TOML",
    "JSON",
    "Markdown",
    "Dockerfile",
    "Makefile",
)


def is_model_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def save_model(
    directory: Path,
    config: ModelConfig,
    weights: Mapping[str, Tensor],
    languages: Sequence[str],
    tokenizer: Path,
    *,
    repos: Sequence[str],
) -> None:
    """Write a model folder: `weights` (a full state dict on the CPU), the language and
    repository tables the model was trained with and the tokenizer files found in the folder
    `tokenizer`. Every file is replaced atomically and the config, which marks a model folder,
    goes first and comes back last: a save interrupted midway, over an older model or not, never
    looks complete."""
    fix = "pass the table of the data the model was trained on"
    _check_table(list(languages), config.n_languages, f"the language table for {directory}", fix)
    _check_table(list(repos), config.n_repos, f"the repository table for {directory}", fix)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in weights.items()}
    if config.tie_embeddings:  # the output head is the embedding: stored once
        tensors.pop(TIED_HEAD, None)
    write_atomic(directory / WEIGHTS_FILE, lambda temporary: save_file(tensors, str(temporary)))
    write_json_atomic(directory / LANGUAGES_FILE, list(languages))
    write_json_atomic(directory / REPOS_FILE, list(repos))
    for name in TOKENIZER_FILES:
        write_bytes_atomic(directory / name, (tokenizer / name).read_bytes())
    write_json_atomic(directory / CONFIG_FILE, config.to_dict())


def load_model(
    directory: Path,
    languages: Sequence[str] | None = None,
    repos: Sequence[str] | None = None,
) -> ZenCoder:
    """The model saved in `directory`, in eval mode, read tensor by tensor. With `languages` or
    `repos` (other tables, e.g. those of the data a fine-tuning run reads) its rows are
    rearranged by name (`model_sources`)."""
    config, sources = model_sources(directory, languages=languages, repos=repos)
    return build(config, sources, seed=0).eval()


def model_sources(
    directory: Path,
    *,
    languages: Sequence[str] | None = None,
    repos: Sequence[str] | None = None,
    vocab_size: int | None = None,
) -> tuple[ModelConfig, dict[str, Source]]:
    """The model saved in `directory` and where each of its weights comes from, for
    `weights.build` to read tensor by tensor, whole or as each rank's shards.

    With `languages` or `repos` (the tables of the data a fine-tuning run reads) the language
    rows and the repository embeddings are rearranged by name to those tables' ids; a name the
    model never saw starts at zero, as every row of a new model does. A folder written before
    repos.json existed cannot say which row is which repository: its repository rows all start
    at zero, with a warning. With `vocab_size` the token rows grow to at least that many
    (`weights.grow_vocabulary`)."""
    config = read_config(directory)
    checkpoint = _checkpoint(directory)
    stored = {_current_name(name): name for name in checkpoint.shapes}
    if languages is not None:
        config = dataclasses.replace(config, n_languages=len(languages))
    if repos is not None:
        config = dataclasses.replace(config, n_repos=len(repos))
    with torch.device("meta"):
        model = ZenCoder(config)
    expected = dict(filled_weights(model))
    known = model.state_dict()  # a tied head too, which folders need not hold
    for name in [*stored, *expected]:
        if name not in known or (name in expected and name not in stored):
            raise ZenCoderError(f"{directory / WEIGHTS_FILE}: tensor {name} does not fit the model")
    sources: dict[str, Source] = {}
    for name in expected:
        source: Source = Stored(checkpoint, stored[name])
        if name.endswith(LANGUAGE_ROWS) and languages is not None:
            table = read_languages(directory)
            source = Rows(source, _rows_by_name(table, languages), len(table), "zero")
        elif name == REPOSITORY_ROWS and repos is not None:
            table = read_repos(directory)
            rows = _rows_by_name(table, repos) if table else (None,) * len(repos)
            source = Rows(source, rows, len(table or ()), "zero")
        elif checkpoint.shapes[stored[name]] != tuple(expected[name].shape):
            raise ZenCoderError(f"{directory / WEIGHTS_FILE}: tensor {name} does not fit the model")
        sources[name] = source
    return grow_vocabulary(config, sources, vocab_size)


def read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ZenCoderError(
            f"{path} not found: {directory} is not a zen-coder model; pass a run's model folder"
        )
    try:
        return ModelConfig(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ZenCoderError(
            f"{path} is not a zen-coder model config ({exc}); export the model again"
        ) from None


def read_languages(directory: Path) -> list[str]:
    """The language table the model in `directory` was trained with: list index = language id.

    A folder written before the table was saved gets the table every such folder had, with a
    warning that says so and how to make the folder say it itself."""
    config = read_config(directory)
    path = directory / LANGUAGES_FILE
    if not path.exists():
        table = list(TABLE_BEFORE_LANGUAGES_FILE)
        if len(table) != config.n_languages:
            raise ZenCoderError(
                f"{directory} has no {LANGUAGES_FILE} and {config.n_languages} language ids, not "
                f"the {len(table)} of a folder written before that file existed; copy the "
                f"{LANGUAGES_FILE} of the prepared data it was trained on into it"
            )
        warnings.warn(
            f"{directory} has no {LANGUAGES_FILE} (written before zen-coder saved it); reading "
            f"its language ids in the order zen-coder used then. Copy the {LANGUAGES_FILE} of "
            "the prepared data it was trained on into the folder to record its table there",
            stacklevel=2,
        )
        return table
    return _read_table(path, config.n_languages)


def read_repos(directory: Path) -> list[str] | None:
    """The repository table the model in `directory` was trained with (list index = repository
    id), or None for a folder written before the table was saved (with a warning: which row
    belongs to which repository is then unknown)."""
    config = read_config(directory)
    path = directory / REPOS_FILE
    if not path.exists():
        warnings.warn(
            f"{directory} has no {REPOS_FILE} (written before zen-coder saved it): which "
            "repository each of its repository embeddings belongs to is unknown, so they start "
            f"at zero. Copy the {REPOS_FILE} of the prepared data it was trained on into the "
            "folder to keep them",
            stacklevel=2,
        )
        return None
    return _read_table(path, config.n_repos)


def _read_table(path: Path, rows: int) -> list[str]:
    """A table file of a model folder, checked against the model's `rows`."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ZenCoderError(f"{path} cannot be read ({exc}); export the model again") from None
    _check_table(table, rows, str(path), "export the model again")
    return table


def _check_table(table: object, rows: int, what: str, fix: str) -> None:
    """A table of `rows` distinct names with the unknown one (id 0) first."""
    fits = (
        isinstance(table, list)
        and all(isinstance(name, str) for name in table)
        and len(set(table)) == len(table) == rows
        and table[0] == UNKNOWN
    )
    if not fits:
        raise ZenCoderError(
            f"{what} does not fit the model: it needs {rows} distinct names, "
            f"{UNKNOWN!r} first; {fix}"
        )


def _checkpoint(directory: Path) -> Checkpoint:
    """The folder's weights file, opened for reading tensor by tensor."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ZenCoderError(f"{path} not found; export the model again")
    try:
        with safe_open(path, framework="pt") as tensor_file:
            names = list(tensor_file.keys())
        return Checkpoint(dict.fromkeys(names, path))
    except (SafetensorError, OSError) as exc:
        raise ZenCoderError(f"{path} cannot be read ({exc}); export the model again") from None


def _current_name(name: str) -> str:
    """A weight's name in today's model: folders written before the experts became a module of
    their own name them `blocks.N.moe.w1` where the model now has `blocks.N.moe.experts.w1`."""
    return re.sub(r"(\.moe)\.(w[123])$", r"\1.experts.\2", name)


def _rows_by_name(table: Sequence[str], names: Sequence[str]) -> tuple[int | None, ...]:
    """For each name of `names`, its row in `table` (None where the table lacks it)."""
    row_of = {name: number for number, name in enumerate(table)}
    return tuple(row_of.get(name) for name in names)
