"""`zen-coder complete`: one completion from the command line, streamed to the terminal as it
comes, with any backend the server has.

At a cursor in a file it is the editor's request: the text before and after the cursor in the
model's fill-in-the-middle layout, with the file's repository (found from the file) as context,
the file's language and history position in the native model's channels, and the editor's line
rules. With a prompt instead it continues the prompt as it is. The prompt is built by the same
function the server uses (`service.completion_prompt`), so a completion here is the one an
editor would get.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zen_coder.errors import ZenCoderError
from zen_coder.inference.prompts import Budget, PromptParts, canonical_language
from zen_coder.inference.stopping import CutOff
from zen_coder.serving.backends import Backend, BackendError, Piece, TextRequest
from zen_coder.serving.service import completion_prompt, prompt_room

if TYPE_CHECKING:
    from zen_coder.inference.repository import RepositoryContext


@dataclass(frozen=True)
class Cursor:
    """Where to complete: the text before and after the cursor, and the file it is in."""

    prefix: str
    suffix: str | None  # None: continue the prefix (no fill-in-the-middle)
    path: Path | None = None


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    multiline: str = "auto"  # the editor's line rules: "auto", "single" or "multi"


@dataclass(frozen=True)
class Completion:
    """What a completion produced, for the summary line."""

    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    first_token_seconds: float
    seconds: float
    snippets: int  # repository snippets in the prompt
    changes: int  # recent changes of the file in the prompt


def cursor_in_file(file: Path, line: int | None, column: int | None) -> Cursor:
    """The cursor at `line`:`column` of `file` (both from 1, as editors show them; a column
    counts characters); without a line, the end of the file, which is continued."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZenCoderError(f"{file} does not exist; pass the file to complete in") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ZenCoderError(
            f"cannot read {file} as UTF-8 text ({error}); pass a text file"
        ) from None
    if line is None:
        if column is not None:
            raise ZenCoderError("--column needs --line; pass both, or neither for the file's end")
        return Cursor(text, None, file)
    offset = cursor_offset(text, line, column or 1, file)
    return Cursor(text[:offset], text[offset:], file)


def cursor_offset(text: str, line: int, column: int, where: Path | str) -> int:
    """The character offset of `line`:`column` (from 1) in `text`; the column may be one past
    the line's last character (the cursor at its end)."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise ZenCoderError(f"line {line} is outside {where} (lines 1 to {len(lines)}); fix --line")
    length = len(lines[line - 1])
    if not 1 <= column <= length + 1:
        raise ZenCoderError(
            f"column {column} is outside line {line} of {where} (columns 1 to {length + 1}); "
            "fix --column"
        )
    return sum(len(before) + 1 for before in lines[: line - 1]) + column - 1


def repository_root(file: Path) -> Path | None:
    """The git checkout `file` is in, if any."""
    try:
        found = subprocess.run(
            ["git", "-C", str(file.resolve().parent), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def open_context(root: Path, backend: Backend) -> RepositoryContext:
    """The repository's index and history, named as the model's repository table names it."""
    from zen_coder.inference.repository import RepositoryContext

    context = RepositoryContext(root, known_repos=backend.repo_names)
    context.refresh()
    return context


def completion_request(
    backend: Backend,
    cursor: Cursor,
    sampling: Sampling,
    budget: Budget,
    repository: RepositoryContext | None,
) -> tuple[TextRequest, int, int]:
    """The backend request for `cursor`, and how many snippets and changes its prompt holds.

    A cursor in a file is built into the model's layout (the budget shrunk to what the model's
    context holds beside the completion); a bare prompt is sent as it is."""
    room = prompt_room(backend, sampling.max_tokens)
    if room is not None and room < 1:
        raise ZenCoderError(
            f"--max-tokens {sampling.max_tokens} leaves no room for a prompt in the model's "
            f"context of {backend.context_length} tokens; ask for fewer"
        )
    common = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "prefix": cursor.prefix,
    }
    if cursor.path is None:
        cutoff = CutOff(multiline="multi")
        return TextRequest(prompt=cursor.prefix, cutoff=cutoff, **common), 0, 0
    path = str(cursor.path)
    relative = repository.relative_path(path) if repository else cursor.path.name
    if room is not None:
        budget = Budget(min(budget.tokens, room), budget.prefix, budget.suffix)
    parts = PromptParts(prefix=cursor.prefix, suffix=cursor.suffix, path=relative)
    prompt = completion_prompt(backend, parts, budget, repository)
    cutoff = CutOff(
        stop=backend.prompt_format.stop,
        multiline=sampling.multiline,
        suffix=cursor.suffix or "",
    )
    request = TextRequest(
        prompt=prompt,
        cutoff=cutoff,
        language=canonical_language(None, path),
        repo=repository.repo_name() if repository else None,
        time=repository.time_of(relative) if repository and relative else 0,
        **common,
    )
    return request, len(prompt.snippets), len(prompt.changes)


async def stream_completion(
    backend: Backend, request: TextRequest, write: Callable[[str], None]
) -> tuple[str, Piece, float]:
    """Run `request`, passing each piece of text to `write` as it comes: the whole text, the
    last piece (finish reason and token counts) and the seconds to the first text."""
    started = time.perf_counter()
    first: float | None = None
    text, last = "", Piece("", "cancelled")
    async with aclosing(backend.stream(request)) as pieces:
        async for piece in pieces:
            if piece.text:
                if first is None:
                    first = time.perf_counter() - started
                write(piece.text)
                text += piece.text
            if piece.finish_reason is not None:
                last = piece
    return text, last, time.perf_counter() - started if first is None else first


def complete(
    backend: Backend,
    cursor: Cursor,
    sampling: Sampling,
    budget: Budget,
    repository: RepositoryContext | None,
    write: Callable[[str], None],
) -> Completion:
    """One completion at `cursor`, streamed through `write`; the backend is closed after."""
    request, snippets, changes = completion_request(backend, cursor, sampling, budget, repository)
    started = time.perf_counter()

    async def run() -> tuple[str, Piece, float]:
        try:
            return await stream_completion(backend, request, write)
        finally:
            await backend.close()

    try:
        text, last, first = asyncio.run(run())
    except BackendError as error:
        raise ZenCoderError(f"the model did not answer: {error}") from None
    return Completion(
        text,
        last.finish_reason or "stop",
        last.prompt_tokens,
        last.cached_tokens,
        last.completion_tokens,
        first,
        time.perf_counter() - started,
        snippets,
        changes,
    )
