"""The zen-coder model folder (a run's `model/`): its files, how it is written and read back.

    zen_coder_config.json   the `ModelConfig`, written last: a folder holding it is complete
    model.safetensors       the weights, whole tensors
    languages.json          the language table the model was trained with (list index = the
                            language id, 0 = "<unknown>"), a copy of the prepared data's
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   the data's tokenizer

The language table travels with the weights because the routing has one row per language id:
a model read with any other table (the mining stage's list reordered or extended since) would
route every language through another language's row, and nothing would say so.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from zen_coder.errors import ZenCoderError
from zen_coder.files import write_atomic, write_bytes_atomic, write_json_atomic
from zen_coder.model.config import ModelConfig
from zen_coder.model.model import ZenCoder

CONFIG_FILE = "zen_coder_config.json"
WEIGHTS_FILE = "model.safetensors"
LANGUAGES_FILE = "languages.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
UNKNOWN_LANGUAGE = "<unknown>"
LANGUAGE_ROWS = ".moe.language"  # the name ending of each block's language-routing table

# The table of every model folder written before languages.json existed: the prepared data's
# order then, ["<unknown>", *zen_coder.history.languages.LANGUAGES] as that list stood. Frozen
# here so those folders keep their meaning whatever later happens to the mining stage's list.
TABLE_BEFORE_LANGUAGES_FILE = (
    UNKNOWN_LANGUAGE,
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
) -> None:
    """Write a model folder: `weights` (a full state dict on the CPU), the language table the
    model was trained with and the tokenizer files found in the folder `tokenizer`. Every file
    is replaced atomically and the config, which marks a model folder, goes first and comes back
    last: a save interrupted midway, over an older model or not, never looks complete."""
    _check_table(
        list(languages),
        config,
        f"the language table for {directory}",
        "pass the table of the data the model was trained on",
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in weights.items()}
    write_atomic(directory / WEIGHTS_FILE, lambda temporary: save_file(tensors, str(temporary)))
    write_json_atomic(directory / LANGUAGES_FILE, list(languages))
    for name in TOKENIZER_FILES:
        write_bytes_atomic(directory / name, (tokenizer / name).read_bytes())
    write_json_atomic(directory / CONFIG_FILE, config.to_dict())


def load_model(directory: Path, languages: Sequence[str] | None = None) -> ZenCoder:
    """The model saved in `directory`, in eval mode. With `languages` (another table, e.g. the
    data a fine-tuning run reads) its language rows are rearranged by name to that table's ids;
    a language the model never saw starts at zero, as every row of a new model does."""
    config = read_config(directory)
    weights = _read_weights(directory)
    if languages is not None:
        table = read_languages(directory)
        weights = {
            name: _rows_by_name(tensor, table, languages)
            if name.endswith(LANGUAGE_ROWS)
            else tensor
            for name, tensor in weights.items()
        }
        config = dataclasses.replace(config, n_languages=len(languages))
    model = ZenCoder(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise ZenCoderError(f"{directory / WEIGHTS_FILE}: tensor {name} does not fit the model")
    return model.eval()


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
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ZenCoderError(f"{path} cannot be read ({exc}); export the model again") from None
    _check_table(table, config, str(path), "export the model again")
    return table


def _check_table(table: object, config: ModelConfig, what: str, fix: str) -> None:
    fits = (
        isinstance(table, list)
        and all(isinstance(name, str) for name in table)
        and len(set(table)) == len(table) == config.n_languages
        and table[0] == UNKNOWN_LANGUAGE
    )
    if not fits:
        raise ZenCoderError(
            f"{what} does not fit the model: it needs {config.n_languages} distinct names, "
            f"{UNKNOWN_LANGUAGE!r} first; {fix}"
        )


def _read_weights(directory: Path) -> dict[str, Tensor]:
    path = directory / WEIGHTS_FILE
    try:
        return {_current_name(name): tensor for name, tensor in load_file(path).items()}
    except FileNotFoundError:
        raise ZenCoderError(f"{path} not found; export the model again") from None
    except (SafetensorError, OSError) as exc:
        raise ZenCoderError(f"{path} cannot be read ({exc}); export the model again") from None


def _current_name(name: str) -> str:
    """A weight's name in today's model: folders written before the experts became a module of
    their own name them `blocks.N.moe.w1` where the model now has `blocks.N.moe.experts.w1`."""
    return re.sub(r"(\.moe)\.(w[123])$", r"\1.experts.\2", name)


def _rows_by_name(rows: Tensor, table: Sequence[str], languages: Sequence[str]) -> Tensor:
    """`rows` (one per language of `table`) rearranged to the ids of `languages`."""
    row_of = {name: number for number, name in enumerate(table)}
    arranged = rows.new_zeros(len(languages), *rows.shape[1:])
    for number, name in enumerate(languages):
        if name in row_of:
            arranged[number] = rows[row_of[name]]
    return arranged
