"""Every setting of `zen-coder mine`, in one dataclass.

The defaults are the recommended recipe. A TOML file's `[mine]` table or `--set key=value` on the
command line override single fields; unknown keys and values of the wrong type are errors that name
the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_toml
from zen_coder.settings import apply_overrides, parse_assignments

# Settings that change how a run executes but not what it produces: a rerun may change them freely.
EXECUTION_FIELDS = frozenset({"commits_per_batch"})


@dataclass(frozen=True)
class MineConfig:
    # Commit filters.
    drop_merge_commits: bool = True
    drop_bot_authors: bool = True
    drop_generated_messages: bool = True
    # CommitChronicle's 95th-percentile caps: at most 16 files and about 43K diff characters.
    max_files_per_commit: int = 16
    max_diff_chars_per_commit: int = 43_000
    max_changed_lines_per_commit: int = 2_000
    # Mass additions or deletions: a commit with at least `ratio_min_lines` changed lines whose
    # larger side (added or deleted lines) outweighs the smaller more than `max_add_delete_ratio`
    # times, e.g. 600 lines deleted and 10 added.
    drop_extreme_ratios: bool = True
    ratio_min_lines: int = 500
    max_add_delete_ratio: float = 20.0

    # File filters.
    drop_vendored: bool = True
    drop_lockfiles: bool = True
    drop_generated_files: bool = True
    drop_minified: bool = True
    drop_binary: bool = True
    drop_unknown_languages: bool = True
    drop_formatting_only: bool = True
    max_file_bytes: int = 1_000_000
    minified_mean_line_chars: int = 110

    # Deduplication (defaults are The Stack's near-deduplication settings).
    dedup_forks: bool = True
    dedup_exact: bool = True
    dedup_near: bool = True
    near_dup_threshold: float = 0.7
    minhash_permutations: int = 256
    shingle_size: int = 5

    # Privacy and normalization.
    redact_secrets: bool = True
    redact_emails: bool = True
    normalize_code: bool = True

    # Execution.
    commits_per_batch: int = 512

    def __post_init__(self) -> None:
        for name in ("max_files_per_commit", "max_file_bytes", "commits_per_batch", "shingle_size"):
            if getattr(self, name) < 1:
                raise ZenCoderError(f"mine setting {name} must be at least 1")
        if not 0.0 < self.near_dup_threshold < 1.0:
            raise ZenCoderError("mine setting near_dup_threshold must be between 0 and 1")
        if self.minhash_permutations < 16:
            raise ZenCoderError("mine setting minhash_permutations must be at least 16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def content_settings(self) -> dict[str, Any]:
        """The settings that decide the output; a dataset must be extended with the same ones."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    def replace(self, **changes: Any) -> MineConfig:
        return dataclasses.replace(self, **changes)


def load_config(path: Path | None = None, assignments: list[str] | None = None) -> MineConfig:
    """The defaults, then the `[mine]` table of `path`, then `--set` assignments."""
    config = MineConfig()
    if path is not None:
        table = read_toml(path, "config file").get("mine", {})
        if not isinstance(table, dict):
            raise ZenCoderError(f"config file {path}: [mine] must be a table")
        config = apply_overrides(config, "mine", table)
    return apply_overrides(config, "mine", parse_assignments(assignments or []))
