"""The backends behind the server, one async protocol: a request in (the prompt as the model
reads it, template already applied), an async stream of text pieces out. Closing the stream
(the client went away, or typed again) stops the work it started.

- native (`serving.native`): a zen-coder model folder through the continuous-batching `Engine`
  (many requests at once, prefix reuse, speculation, history channels);
- huggingface (`serving.huggingface`): transformers' `generate` in a worker thread, one request
  at a time;
- openai (`serving.upstream`): an OpenAI-compatible upstream (vLLM serving a large model's
  Hugging Face export). vLLM rejects `suffix`, so fill-in-the-middle prompts are built here and
  sent to /completions; chat requests pass through to its /chat/completions.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zen_coder.data.tokenizer import EOS, RoleTokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.backends import detect_backend
from zen_coder.inference.prompts import SPECIAL, TEXT, Prompt, PromptFormat
from zen_coder.inference.stopping import CutOff

BACKENDS = ("native", "huggingface", "openai")


class BackendError(Exception):
    """A backend could not answer (an upstream down or refusing): the server answers 502."""


@dataclass(frozen=True)
class TextRequest:
    """One completion to generate. `prompt` is what the model reads: a built `Prompt` (its
    special tokens go in by id, so code that spells one cannot forge it) or a client's raw text
    (spelled special tokens count, as clients that template themselves expect). `prefix` is the
    text before the cursor (the indentation rule reads it); a native model's history channels
    come from `language`, `repo` (a name the model knows) and `time`. With `ignore_eos` neither
    the end of text nor the layout's end markers end the completion (the caller leaves them
    out of `cutoff.stop`)."""

    prompt: Prompt | str
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    cutoff: CutOff = field(default_factory=CutOff)
    prefix: str = ""
    client: str | None = None
    language: str | None = None
    repo: str | None = None
    time: int = 0
    ignore_eos: bool = False  # run on past the model's end markers (benchmarks, random weights)

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt.text


@dataclass(frozen=True)
class Piece:
    """A streamed piece of one completion, with the request's token counts so far where the
    backend knows them (an upstream tells them only at the end); the last piece has a
    `finish_reason` ("stop", "length" or "cancelled") and the final counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    client: str | None = None

    def as_text(self, prompt: Prompt | str, format_stop: Sequence[str]) -> TextRequest:
        """The request as a completion of `prompt` (the conversation in the model's layout),
        ending at its stop sequences or the layout's end markers."""
        return TextRequest(
            prompt=prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            cutoff=CutOff(stop=(*self.stop, *format_stop), multiline="multi"),
            client=self.client,
        )


@dataclass
class BackendStats:
    """What /metrics shows of a backend beyond what the app counts itself."""

    queue_depth: int = 0  # requests waiting for the model
    active: int = 0  # requests being generated
    counters: dict[str, float] = field(default_factory=dict)  # e.g. drafted/accepted tokens


class Backend(Protocol):
    name: str  # "native", "huggingface" or "openai"
    prompt_format: PromptFormat  # the model's fill-in-the-middle and repository layout
    repo_names: tuple[str, ...]  # the repositories the model knows by id (native), else empty
    context_length: int | None  # positions for prompt and completion together; None: unknown

    def count(self, text: str) -> int:
        """Tokens of `text` as the model reads it (an estimate for an upstream)."""
        ...

    def stream(self, request: TextRequest) -> AsyncIterator[Piece]: ...

    def chat(self, request: ChatRequest) -> AsyncIterator[Piece]: ...

    def stats(self) -> BackendStats: ...

    def identity(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def open_backend(
    model: str,
    *,
    backend: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    slots: int = 8,
    family: str = "zen-coder",
    served_model: str | None = None,
    api_key: str | None = None,
    tokenizer: str | None = None,
    threads: int | None = None,
) -> Backend:
    """The backend for `model` (a folder, a Hub name or an upstream URL); `backend` None
    detects it as every command does. `family` names an upstream model's prompt layout and
    `tokenizer` (a folder or tokenizer.json) lets the budget count its tokens exactly; `threads`
    sets torch's threads for a local model on the CPU (`cpu_threads`). Each backend's module is
    imported only when chosen (transformers is slow to import)."""
    backend = backend or detect_backend(model)
    if backend != "openai" and device == "cpu":
        import torch

        torch.set_num_threads(cpu_threads(threads))
    if backend == "native":
        from zen_coder.serving.native import NativeBackend

        return NativeBackend(Path(model), device=device, dtype=dtype, slots=slots)
    if backend == "huggingface":
        from zen_coder.serving.huggingface import HuggingFaceBackend

        return HuggingFaceBackend(model, device=device, dtype=dtype)
    if backend == "openai":
        from zen_coder.serving.upstream import UpstreamBackend

        return UpstreamBackend(
            model, family=family, model=served_model, api_key=api_key, tokenizer=tokenizer
        )
    raise ZenCoderError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def cpu_threads(threads: int | None = None) -> int:
    """Torch's threads for a model served on the CPU: `threads`, else every core this process
    may use but one. The spare core is the event loop's (HTTP, streaming, the editor rules):
    torch's workers spin between operations and would take it. On 2 cores, a 64-token
    completion streamed in 579 ms with two threads and 185 ms with one (measured)."""
    if threads is not None:
        if threads < 1:
            raise ZenCoderError(f"--threads {threads}: pass 1 or more")
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def chat_prompt(roles: RoleTokenizer, messages: Sequence[dict[str, Any]]) -> Prompt:
    """A conversation in the instruction layout zen-coder trains on
    (`<|instruction|>message<|response|>answer`): system and user turns are instructions,
    assistant turns responses, each closed by EOS, and the prompt ends ready for the answer.
    The role tokens go in by id and the messages as text, so a message that spells a role token
    cannot forge a turn."""
    tokens = roles.role_tokens()
    instruction, response = (SPECIAL, tokens["<|instruction|>"]), (SPECIAL, tokens["<|response|>"])
    pieces: list[tuple[bool, str]] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "assistant":
            pieces += [instruction, (TEXT, "\n\n".join(pending)), response]
            pieces += [(TEXT, message["content"]), (SPECIAL, tokens[EOS])]
            pending = []
        else:
            pending.append(message["content"])
    pieces += [instruction, (TEXT, "\n\n".join(pending)), response]
    return Prompt(tuple(pieces), 0, [], [])
