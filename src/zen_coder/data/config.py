"""Every setting of `zen-coder prepare`, in one dataclass.

The defaults suit the tiny recipe; a recipe's `[prepare]` table (configs/*.toml) or `--set
key=value` override single fields, with the same checks as the mining settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.settings import apply_overrides, parse_assignments

EDIT_TARGETS = ("diff", "after", "both")


@dataclass(frozen=True)
class PrepareConfig:
    # Tokenizer and sequences.
    vocab_size: int = 4096
    context_length: int = 512
    tokenizer_train_chars: int = 20_000_000

    # Temporal split: per repository, the newest commits are held out.
    validation_fraction: float = 0.05

    # Sample formats.
    commit_edits: bool = True
    edit_target: str = "diff"  # what a commit edit predicts: "diff", "after" (the file) or "both"
    file_histories: bool = True
    file_contents: bool = True  # post-commit file contents, as plain files or fill-in-the-middle
    fim_rate: float = 0.5  # share of file contents rearranged for fill-in-the-middle
    fim_spm_rate: float = 0.5  # share of those in suffix-prefix-middle order
    instructions: bool = True
    min_instruction_words: int = 3
    english_instructions_only: bool = False

    # Decontamination against HumanEval, MBPP and MultiPL-E.
    decontaminate: bool = True
    decontamination_ngram: int = 13

    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "decontamination_ngram"):
            if getattr(self, name) < 1:
                raise ZenCoderError(f"prepare setting {name} must be at least 1")
        if self.vocab_size < 512:
            raise ZenCoderError("prepare setting vocab_size must be at least 512")
        if self.context_length < 16:
            raise ZenCoderError("prepare setting context_length must be at least 16")
        for name in ("validation_fraction", "fim_rate", "fim_spm_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ZenCoderError(f"prepare setting {name} must be between 0 and 1")
        if self.edit_target not in EDIT_TARGETS:
            raise ZenCoderError(
                f"prepare setting edit_target must be one of {', '.join(EDIT_TARGETS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_prepare_config(
    path: Path | None = None, assignments: list[str] | None = None
) -> PrepareConfig:
    """The defaults, then the `[prepare]` table of the recipe at `path`, then `--set` values."""
    config = PrepareConfig()
    if path is not None:
        table = read_toml(path, "recipe").get("prepare", {})
        if not isinstance(table, dict):
            raise ZenCoderError(f"recipe {path}: [prepare] must be a table")
        config = apply_overrides(config, "prepare", table)
    return apply_overrides(config, "prepare", parse_assignments(assignments or []))
