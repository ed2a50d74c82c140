"""The upstream backend: any OpenAI-compatible server (vLLM serving a large model's Hugging Face
export, llama.cpp, TGI). Fill-in-the-middle prompts, built here in the model family's layout, go
to its /completions (it never sees `suffix`, which vLLM rejects); the indentation and suffix
cut-offs run here on the streamed text; chat passes through to its /chat/completions. Closing a
stream closes the upstream connection, which vLLM takes as an abort."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from zen_coder.data.tokenizer import read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.prompts import PromptFormat
from zen_coder.inference.stopping import CutOff, TextCutter
from zen_coder.serving.backends import BackendError, BackendStats, ChatRequest, Piece, TextRequest

UPSTREAM_STOP_LIMIT = 4  # the OpenAI API (and vLLM) take at most 4; all are cut here anyway
CHARS_PER_TOKEN = 3.0  # an upstream's tokenizer unknown: code averages about 3 characters a token


class UpstreamBackend:
    """`family` names the served model's prompt layout (see `PromptFormat.from_family`);
    `tokenizer`, its tokenizer.json or folder, makes the prompt budget exact (else estimated);
    `model` None serves the first model the upstream lists."""

    name = "openai"
    repo_names: tuple[str, ...] = ()

    def __init__(
        self,
        base_url: str,
        family: str = "zen-coder",
        model: str | None = None,
        api_key: str | None = None,
        tokenizer: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ZenCoderError(
                f"{base_url!r} is not a server URL; pass one like http://host:8000/v1"
            )
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)
        listed = self._models(headers, timeout)
        self.model = model or listed[0]["id"]
        served = next((entry for entry in listed if entry.get("id") == self.model), {})
        self.context_length = served.get("max_model_len")  # vLLM says; others do not
        self.prompt_format = PromptFormat.from_family(family)
        self.tokenizer = read_tokenizer(Path(tokenizer)).tokenizer if tokenizer else None
        self.active = 0

    def _models(self, headers: dict[str, str], timeout: float) -> list[dict[str, Any]]:
        try:
            answer = httpx.get(f"{self.base_url}/models", headers=headers, timeout=timeout)
            answer.raise_for_status()
            listed = answer.json()["data"]
            if not listed or not isinstance(listed[0].get("id"), str):
                raise ValueError("no model listed")
            return listed
        except (httpx.HTTPError, ValueError, KeyError, AttributeError, TypeError) as error:
            reason = str(error) or type(error).__name__
            raise ZenCoderError(
                f"{self.base_url}/models did not name a model ({reason}); start the upstream "
                "server, fix the URL (like http://localhost:8001/v1) or check its API key"
            ) from None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": self.base_url, "model": self.model}

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    async def stream(self, request: TextRequest) -> AsyncIterator[Piece]:
        body = {
            "model": self.model,
            "prompt": request.text,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": list(request.cutoff.stop[:UPSTREAM_STOP_LIMIT]) or None,
            "ignore_eos": request.ignore_eos or None,  # vLLM's extension
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        cutter = TextCutter(request.cutoff, prefix=request.prefix)
        async for piece in self._relay("/completions", body, cutter, text_of_completion):
            yield piece

    async def chat(self, request: ChatRequest) -> AsyncIterator[Piece]:
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": list(request.stop) or None,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        cutter = TextCutter(CutOff(stop=request.stop, multiline="multi"))
        async for piece in self._relay("/chat/completions", body, cutter, text_of_chat):
            yield piece

    async def _relay(
        self,
        path: str,
        body: dict[str, Any],
        cutter: TextCutter,
        text_of: Callable[[dict[str, Any]], str],
    ) -> AsyncIterator[Piece]:
        """Stream `body` to the upstream's `path` and yield its text through `cutter`."""
        body = {name: value for name, value in body.items() if value is not None}
        usage: dict[str, Any] = {}
        reason = "stop"
        self.active += 1
        try:
            async with self.client.stream("POST", path, json=body) as answer:
                if answer.status_code != 200:
                    detail = (await answer.aread()).decode(errors="replace")
                    raise BackendError(
                        f"upstream {self.base_url}{path} answered {answer.status_code}: "
                        f"{' '.join(detail.split())[:200]}"
                    )
                async for chunk in server_sent_events(answer):
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = cutter.push(text_of(choice))
                        if delta:
                            yield Piece(delta)
                        reason = choice.get("finish_reason") or reason
                    if cutter.done:
                        break  # leaving the block closes the connection: the upstream aborts
        except httpx.HTTPError as error:
            reason = str(error) or type(error).__name__
            raise BackendError(f"upstream {self.base_url}{path} failed: {reason}") from None
        finally:
            self.active -= 1
        yield Piece(
            cutter.flush(),
            "stop" if cutter.done else reason,
            int(usage.get("prompt_tokens") or 0),
            int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )

    def stats(self) -> BackendStats:
        return BackendStats(active=self.active)

    async def close(self) -> None:
        await self.client.aclose()


def text_of_completion(choice: dict[str, Any]) -> str:
    return choice.get("text") or ""


def text_of_chat(choice: dict[str, Any]) -> str:
    return (choice.get("delta") or {}).get("content") or ""


async def server_sent_events(answer: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE stream, up to `data: [DONE]`."""
    async for line in answer.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            parsed = json.loads(data)
        except ValueError:
            raise BackendError(f"upstream sent something other than JSON: {data[:200]}") from None
        if isinstance(parsed, dict):
            yield parsed
