"""What every completion endpoint shares, whatever the client's request shape: the prompt built
in the model's layout with repository context and checked against the limits, the completions
run on the backend with cancellation (the client went away, or the same client asked again) and
counted in the metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from zen_coder.inference.prompts import (
    Budget,
    Prompt,
    PromptFormat,
    PromptParts,
    Snippet,
    canonical_language,
)
from zen_coder.serving.backends import Backend, ChatRequest, Piece, TextRequest
from zen_coder.serving.metrics import Metrics
from zen_coder.serving.security import ApiError
from zen_coder.serving.settings import ServerSettings

if TYPE_CHECKING:  # imported by the app only when the server has a repository
    from zen_coder.inference.repository import RepositoryContext


@dataclass(frozen=True)
class Choice:
    """One finished completion."""

    index: int
    text: str
    last: Piece  # the finish reason and token counts


@dataclass(frozen=True)
class Call:
    """Who asks, and how the server learns that they went away."""

    caller: str  # the API key's id
    disconnected: Callable[[], Awaitable[None]]  # returns once the client has gone

    def client(self, user: str | None) -> str | None:
        """The client whose newer request cancels its older one: a `user` the editor names,
        within its API key; None (no cancelling) when it names none."""
        return None if user is None else f"{self.caller}:{user}"


@dataclass(frozen=True)
class Result:
    """The completions of a request that is not streamed, and how long they took."""

    choices: list[Choice]
    first_token_seconds: float  # until the first text (the whole time if none came)
    seconds: float


class Service:
    def __init__(
        self,
        backend: Backend,
        settings: ServerSettings,
        metrics: Metrics,
        repository: RepositoryContext | None = None,
    ) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self.repository = repository
        self.newest: dict[str, asyncio.Event] = {}  # per client: the stop of its latest request
        self.repo_name = repository.repo_name() if repository else None

    # ---- prompts -----------------------------------------------------------------------------

    def fill_in_the_middle(
        self, parts: PromptParts, max_tokens: int, retrieve: bool = True
    ) -> Prompt:
        """The prompt of a completion at a cursor, in the model's layout: with the server's
        repository (and `retrieve`), its name, the snippets nearest the cursor and the file's
        recent changes join what the editor sent. The budget shares are the server's, its size
        the server's too unless the model's context leaves less beside `max_tokens`."""
        settings = self.settings
        tokens = min(settings.context_tokens, self.prompt_limit(max_tokens))
        budget = Budget(tokens, settings.prefix_share, settings.suffix_share)
        repository = self.repository if retrieve else None
        prompt = completion_prompt(self.backend, parts, budget, repository)
        self.check_prompt_tokens(prompt.prompt_tokens, max_tokens)
        return prompt

    @staticmethod
    def language_of(path: str | None, named: str | None) -> str | None:
        """The edited file's language as mining names it (an editor's identifier mapped)."""
        return canonical_language(named, path)

    @property
    def prompt_format(self) -> PromptFormat:
        return self.backend.prompt_format

    def time_of(self, path: str | None) -> int:
        """The file's history position, as the model's time channel counts it (0 unknown)."""
        if self.repository is None or not path:
            return 0
        return self.repository.time_of(self.repository.relative_path(path) or path)

    def prompt_limit(self, max_tokens: int) -> int:
        """The most prompt tokens a request may have: the server's limit, and what the model's
        context holds beside the completion (and a start-of-text token)."""
        limit = self.settings.max_prompt_tokens
        room = prompt_room(self.backend, max_tokens)
        if room is None:
            return limit
        if room < 1:
            raise ApiError(
                400,
                f"max_tokens {max_tokens} leaves no room for a prompt in the model's context of "
                f"{self.backend.context_length} tokens; ask for fewer",
            )
        return min(limit, room)

    def check_prompt_tokens(self, tokens: int, max_tokens: int) -> None:
        limit = self.prompt_limit(max_tokens)
        if tokens > limit:
            raise ApiError(
                400,
                f"the prompt has {tokens} tokens; at most {limit} are accepted with max_tokens "
                f"{max_tokens}",
            )

    def check_raw_prompt(self, prompt: str, max_tokens: int) -> None:
        self.check_prompt_tokens(self.backend.count(prompt), max_tokens)

    def max_tokens(self, asked: int | None) -> int:
        limit = self.settings.max_tokens
        if asked is None:
            return min(self.settings.default_max_tokens, limit)
        if asked > limit:
            raise ApiError(400, f"max_tokens {asked} is over this server's limit of {limit}")
        return asked

    def check_n(self, n: int) -> None:
        if n > self.settings.max_n:
            raise ApiError(400, f"n {n} is over this server's limit of {self.settings.max_n}")

    # ---- running -----------------------------------------------------------------------------

    async def run(
        self,
        endpoint: str,
        requests: list[TextRequest] | list[ChatRequest],
        client: str | None,
        disconnected: Callable[[], Awaitable[None]] | None = None,
        predict_seconds: float | None = None,
    ) -> AsyncIterator[tuple[int, Piece]]:
        """The pieces of every choice, tagged with the choice's index, as they come.

        A newer request of the same `client`, or `disconnected` returning (the client went
        away; a streaming response is closed by the server instead), stops every choice: each
        ends with finish reason "cancelled" and the backend frees what it held. The server's
        request time limit (from the start) and `predict_seconds` (from the first text, as
        llama.cpp's t_max_predict_ms) end them with "length", keeping what came."""
        stop = self._claim(client)
        started = time.perf_counter()
        first_text = asyncio.Event()
        ended = 0
        watcher = asyncio.create_task(disconnected()) if disconnected else None
        ends = {asyncio.create_task(stop.wait()): "cancelled"}
        if watcher is not None:
            ends[watcher] = "cancelled"
        if self.settings.request_seconds is not None:
            ends[asyncio.create_task(asyncio.sleep(self.settings.request_seconds))] = "length"
        if predict_seconds is not None:
            ends[asyncio.create_task(after(first_text, predict_seconds))] = "length"
        streams = [self._backend_stream(request) for request in requests]
        try:
            async with aclosing(merge(streams, ends)) as pieces:
                async for index, piece in pieces:
                    if piece.text and not first_text.is_set():
                        first_text.set()
                        self.metrics.first_token.labels(endpoint).observe(
                            time.perf_counter() - started
                        )
                    if piece.finish_reason is not None:
                        ended += 1
                        self._count_finished(piece)
                    yield index, piece
        finally:
            for task in ends:
                task.cancel()
            if client is not None and self.newest.get(client) is stop:
                del self.newest[client]
            if stop.is_set():
                self.metrics.cancelled.labels("superseded").inc()
            elif (watcher is not None and watcher.done()) or ended < len(requests):
                self.metrics.cancelled.labels("disconnected").inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _backend_stream(self, request: TextRequest | ChatRequest) -> AsyncIterator[Piece]:
        if isinstance(request, ChatRequest):
            return self.backend.chat(request)
        return self.backend.stream(request)

    def _claim(self, client: str | None) -> asyncio.Event:
        """The stop event of a new request; the same client's older request is stopped."""
        stop = asyncio.Event()
        if client is not None:
            older = self.newest.get(client)
            if older is not None:
                older.set()
            self.newest[client] = stop
        return stop

    def _count_finished(self, piece: Piece) -> None:
        metrics = self.metrics
        metrics.finished.labels(piece.finish_reason).inc()
        metrics.prompt_tokens.inc(piece.prompt_tokens)
        metrics.cached_tokens.inc(piece.cached_tokens)
        metrics.completion_tokens.inc(piece.completion_tokens)

    async def collect(
        self,
        endpoint: str,
        requests: list[TextRequest] | list[ChatRequest],
        client: str | None,
        disconnected: Callable[[], Awaitable[None]] | None,
        predict_seconds: float | None = None,
    ) -> Result:
        """Every choice's whole text, for the responses that are not streamed."""
        texts = ["" for _ in requests]
        last = [Piece("", "cancelled") for _ in requests]
        started = time.perf_counter()
        first = None
        run = self.run(endpoint, requests, client, disconnected, predict_seconds)
        async with aclosing(run) as pieces:
            async for index, piece in pieces:
                if first is None and piece.text:
                    first = time.perf_counter() - started
                texts[index] += piece.text
                if piece.finish_reason is not None:
                    last[index] = piece
        seconds = time.perf_counter() - started
        choices = [Choice(index, text, last[index]) for index, text in enumerate(texts)]
        return Result(choices, seconds if first is None else first, seconds)


def completion_prompt(
    backend: Backend,
    parts: PromptParts,
    budget: Budget,
    repository: RepositoryContext | None = None,
) -> Prompt:
    """A completion's prompt at a cursor in the backend's layout within `budget`: with a
    repository, its name, the snippets nearest the cursor, the file's recent changes and the
    ages of its lines (the time channel's per-token times) join the parts (the server and
    `zen-coder complete` build prompts the same way)."""
    language = canonical_language(parts.language, parts.path)
    if repository is not None:
        parts = repository.prompt_parts(
            parts.prefix, parts.suffix, parts.path, language, budget, snippets=parts.snippets
        )
    else:
        parts = replace(parts, language=language)
    return backend.prompt_format.build(parts, budget, backend.count)


def prompt_room(backend: Backend, max_tokens: int) -> int | None:
    """The prompt tokens the model's context holds beside a completion of `max_tokens` (and a
    start-of-text token); None where the backend does not know its context."""
    context = backend.context_length
    return None if context is None else context - max_tokens - 1


async def merge(
    streams: list[AsyncIterator[Piece]], ends: dict[asyncio.Task, str]
) -> AsyncIterator[tuple[int, Piece]]:
    """The pieces of several streams as they come, tagged with the stream's index, until each
    has finished, or until one of `ends` completes: then every unfinished stream is closed (its
    backend work stops) and ends with an empty piece whose finish reason is that task's, with
    the stream's last token counts."""
    queue: asyncio.Queue[tuple[int, Piece | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Piece]) -> None:
        try:
            async with aclosing(stream) as pieces:
                async for piece in pieces:
                    await queue.put((index, piece))
        except Exception as error:  # raised again in the request, which answers for it
            await queue.put((index, error))
        await queue.put((index, None))  # this stream has ended

    pumps = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    open_streams = set(range(len(streams)))
    latest = [Piece("") for _ in streams]
    getter: asyncio.Task | None = None
    try:
        while open_streams:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, *ends}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                reason = next(ends[task] for task in ends if task in done)
                for index in sorted(open_streams):
                    yield index, replace(latest[index], text="", finish_reason=reason)
                return
            index, item = getter.result()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                open_streams.discard(index)
            else:
                latest[index] = item
                yield index, item
    finally:
        if getter is not None:
            getter.cancel()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def after(event: asyncio.Event, seconds: float) -> None:
    """Return `seconds` after `event` is set."""
    await event.wait()
    await asyncio.sleep(seconds)


def snippets_from_client(files: list[tuple[str, str]]) -> list[Snippet]:
    """Context the editor sent (llama.vim's chunks, Tabby's declarations and snippets)."""
    return [Snippet(path, text) for path, text in files if text.strip()]
