"""The native backend: a zen-coder model folder behind the continuous-batching `Engine`, with
the history channels the model was trained with filled from the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from zen_coder.inference.engine import Engine, EngineRequest
from zen_coder.inference.prompts import PromptFormat
from zen_coder.model.folder import read_repos
from zen_coder.serving.backends import BackendStats, ChatRequest, Piece, TextRequest, chat_prompt


class NativeBackend:
    name = "native"

    def __init__(
        self, folder: Path, device: str = "cpu", dtype: str | None = None, slots: int = 8
    ) -> None:
        self.folder = folder.resolve()
        self.device = device
        self.engine = Engine.from_folder(self.folder, device=device, dtype=dtype, slots=slots)
        self.roles = self.engine.roles
        self.prompt_format = PromptFormat.from_tokenizer(self.roles)
        self.repo_names = tuple(read_repos(self.folder) or ())
        self.context_length = self.engine.capacity

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.folder), "device": self.device}

    def count(self, text: str) -> int:
        return len(self.roles.tokenizer.encode(text, add_special_tokens=False).ids)

    def ids_and_times(self, request: TextRequest) -> tuple[list[int], list[int] | None]:
        """A raw prompt as the engine reads text (spelled special tokens as tokens); a built
        one with its special tokens by id and its code as text, and its tokens' times where
        it has them (the BOS takes the first token's, as `prepare` gives it)."""
        if isinstance(request.prompt, str):
            return self.engine.encode(request.prompt), None
        ids, times = request.prompt.ids_and_times(self.roles.tokenizer)
        if self.roles.bos_id is None:
            return ids, times
        bos_times = None if times is None else times[:1] + times
        return [self.roles.bos_id, *ids], bos_times

    def stream(self, request: TextRequest) -> AsyncIterator[Piece]:
        ids, times = self.ids_and_times(request)
        engine_request = EngineRequest(
            ids=ids,
            times=times,
            channels=self.engine.tables.channels(request.repo, request.language, request.time),
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            cutoff=request.cutoff,
            client=request.client,
            prefix=request.prefix,
            ignore_eos=request.ignore_eos,
        )
        return self._events(engine_request)

    def chat(self, request: ChatRequest) -> AsyncIterator[Piece]:
        prompt = chat_prompt(self.roles, request.messages)
        return self.stream(request.as_text(prompt, self.prompt_format.stop))

    async def _events(self, request: EngineRequest) -> AsyncIterator[Piece]:
        stream = self.engine.submit(request)
        try:
            async for event in stream:
                yield Piece(
                    event.text,
                    event.finish_reason,
                    event.prompt_tokens,
                    event.cached_tokens,
                    event.completion_tokens,
                )
        finally:
            stream.cancel()  # the slot is freed at the engine's next step

    def stats(self) -> BackendStats:
        stats = self.engine.stats()
        counters = {
            "requests": stats.requests,
            "prefix_hits": stats.prefix_hits,
            "steps": stats.steps,
            "drafted_tokens": stats.drafted_tokens,
            "accepted_tokens": stats.accepted_tokens,
            "cancelled": stats.cancelled,
        }
        return BackendStats(queue_depth=stats.queued, active=stats.active, counters=counters)

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)
