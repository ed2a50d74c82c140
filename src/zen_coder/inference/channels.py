"""The history channels of a native model's prompt, by the names its folder records.

A zen-coder model reads three side inputs besides the tokens: a repository id, a language id and
each token's temporal position. Every front end (`native.NativeGenerator` for `zen-coder eval`,
the serving engine for `zen-coder serve` and `complete`) turns the names a caller knows into ids
here, by the tables the model folder saved (`model.folder.read_repos`, `read_languages`), so
each name gets the row the model was trained with for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zen_coder.inference.slots import Channels
from zen_coder.model.folder import read_languages, read_repos

# The one time a prompt without times of its own gets: every token the same. The temporal bias
# is a function of the distance between a query's and a key's times only, so a time shared by a
# whole prompt (and the tokens generated after it, which take the last prompt token's time)
# adds one constant to each query's scores, which the softmax cancels: any value computes the
# same. Times matter where a prompt mixes them (a file's history, `EngineRequest.times`).
PROMPT_TIME = 0


@dataclass(frozen=True)
class ChannelTables:
    """The names a model learned its history channels under: repository names as `zen-coder
    mine` gives them and language names (any case), each to its id; anything else is unknown
    (id 0), which the model also learned (repository dropout, files of no known language)."""

    repos: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of_folder(cls, folder: Path) -> ChannelTables:
        repos = read_repos(folder) or []
        return cls(
            repos={name: number for number, name in enumerate(repos) if number},
            languages=language_ids(read_languages(folder)),
        )

    def channels(self, repo: str | None, language: str | None, time: int = PROMPT_TIME) -> Channels:
        """The ids of a prompt's repository and language (unknown or absent: 0) and its time."""
        return Channels(
            repo=self.repos.get(repo or "", 0),
            language=self.languages.get((language or "").lower(), 0),
            time=time,
        )


def language_ids(table: list[str]) -> dict[str, int]:
    """Lower-cased language name to the id a model's language table gives it (0, the unknown
    language, is nobody's: a name missing from the table is unknown too)."""
    return {name.lower(): number for number, name in enumerate(table) if number}
