"""The Hugging Face backend: transformers' `generate`, in a worker thread, one request at a time
(generate batches nothing across requests; the rest wait in line, counted as the queue). Text
streams out through the same cut-off rules as the engine's, and a request whose client went
away stops at its next token."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import torch

from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer
from zen_coder.inference.generation import GenerationConfig
from zen_coder.inference.huggingface import HuggingFaceGenerator, sampling_arguments
from zen_coder.inference.prompts import PromptFormat
from zen_coder.inference.stopping import TextCutter
from zen_coder.serving.backends import BackendStats, ChatRequest, Piece, TextRequest, chat_prompt

Emit = Callable[[Piece], None]


class HuggingFaceBackend:
    name = "huggingface"
    repo_names: tuple[str, ...] = ()

    def __init__(self, folder_or_name: str, device: str = "cpu", dtype: str | None = None) -> None:
        self.generator = HuggingFaceGenerator(folder_or_name, device=device, dtype=dtype)
        self.model, self.tokenizer = self.generator.model, self.generator.tokenizer
        self.roles = self._role_tokenizer()
        self.prompt_format = PromptFormat.from_tokenizer(self.roles)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.turn = threading.Lock()  # held by the one request generating
        self.counts_lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.generated_tokens = 0  # since start: shows that a cancelled request stopped early

    def _role_tokenizer(self) -> RoleTokenizer:
        """The role tokens of the model's tokenizer, read from its files as saved (a Hub name
        has no folder of its own to read)."""
        with tempfile.TemporaryDirectory() as folder:
            self.tokenizer.save_pretrained(folder)
            return read_tokenizer(Path(folder))

    def identity(self) -> dict[str, Any]:
        return {**self.generator.identity(), "device": str(self.model.device.type)}

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def ids(self, request: TextRequest) -> list[int]:
        if isinstance(request.prompt, str):
            return self.tokenizer(request.prompt)["input_ids"]
        start = [] if self.roles.bos_id is None else [self.roles.bos_id]
        return start + request.prompt.ids(self.roles.tokenizer)

    def stream(self, request: TextRequest) -> AsyncIterator[Piece]:
        return pieces_from_thread(lambda emit, cancelled: self._take_turn(request, emit, cancelled))

    def chat(self, request: ChatRequest) -> AsyncIterator[Piece]:
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template(
                request.messages, tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = chat_prompt(self.roles, request.messages)
        return self.stream(request.as_text(prompt, self.prompt_format.stop))

    def _take_turn(self, request: TextRequest, emit: Emit, cancelled: threading.Event) -> None:
        self._count(waiting=1)
        with self.turn:
            self._count(waiting=-1, running=1)
            try:
                if not cancelled.is_set():  # its client left while it waited
                    self._generate(request, emit, cancelled)
            finally:
                self._count(running=-1)

    def _count(self, waiting: int = 0, running: int = 0) -> None:
        with self.counts_lock:
            self.waiting += waiting
            self.running += running

    def _generate(self, request: TextRequest, emit: Emit, cancelled: threading.Event) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        prompt = torch.tensor([self.ids(request)], device=self.model.device)
        if request.max_tokens == 0:  # generate refuses to generate nothing
            emit(Piece("", "length", int(prompt.shape[1])))
            return
        cutter = TextCutter(request.cutoff, prefix=request.prefix)
        streamer = CuttingStreamer(
            self.tokenizer, cutter, emit, int(prompt.shape[1]), request.ignore_eos
        )

        class Stop(StoppingCriteria):
            """Ends generation once the cutter has cut or the client has gone."""

            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                done = cancelled.is_set() or cutter.done
                return torch.full((input_ids.shape[0],), done, device=input_ids.device)

        config = GenerationConfig(temperature=request.temperature, top_p=request.top_p)
        torch.manual_seed(request.seed)
        with torch.no_grad():
            self.model.generate(
                **({"eos_token_id": None} if request.ignore_eos else {}),
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=request.max_tokens,
                repetition_penalty=1.0,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Stop()]),
                **sampling_arguments(config),
            )
        rest = cutter.flush()
        generated = streamer.generated
        with self.counts_lock:
            self.generated_tokens += len(generated)
        ended = (
            not request.ignore_eos and generated and generated[-1] == self.tokenizer.eos_token_id
        )
        if cutter.reason == "stop" or ended:
            reason = "stop"
        elif cancelled.is_set():
            reason = "cancelled"
        else:
            reason = "length" if len(generated) >= request.max_tokens else "stop"
        emit(Piece(rest, reason, int(prompt.shape[1]), 0, len(generated)))

    def stats(self) -> BackendStats:
        counters = {"generated_tokens": self.generated_tokens}
        return BackendStats(queue_depth=self.waiting, active=self.running, counters=counters)

    async def close(self) -> None:
        return None


class CuttingStreamer:
    """A transformers streamer that decodes the new tokens as they come and feeds the cutter
    (the model's end of text shows as nothing; half a character waits for its rest). The first
    `put` is the prompt, skipped."""

    def __init__(
        self, tokenizer: Any, cutter: TextCutter, emit: Emit, prompt_tokens: int, ignore_eos: bool
    ) -> None:
        self.tokenizer, self.cutter, self.emit = tokenizer, cutter, emit
        self.prompt_tokens, self.ignore_eos = prompt_tokens, ignore_eos
        self.generated: list[int] = []
        self.shown = 0  # characters of the decoded completion handed to the cutter
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.generated += value.reshape(-1).tolist()
        self._push(final=False)

    def end(self) -> None:
        """The end of generation: a last half character is what the model wrote."""
        self._push(final=True)

    def _push(self, final: bool) -> None:
        eos = self.tokenizer.eos_token_id
        ids = [token for token in self.generated if token != eos or self.ignore_eos]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if text.endswith("\ufffd") and not final:
            return
        delta = self.cutter.push(text[self.shown :])
        self.shown = len(text)
        if delta:
            self.emit(Piece(delta, None, self.prompt_tokens, 0, len(self.generated)))


async def pieces_from_thread(run: Callable[[Emit, threading.Event], None]) -> AsyncIterator[Piece]:
    """The pieces `run(emit, cancelled)` produces on a thread of its own, as an async iterator.
    Closing the iterator sets `cancelled`, which the producer checks between tokens."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Piece | BaseException | None] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: Piece | BaseException | None) -> None:
        if not loop.is_closed():  # a server shutting down no longer listens
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            run(put, cancelled)
        except Exception as error:  # handed to the request, which answers for it
            put(error)
        finally:
            put(None)

    threading.Thread(target=work, name="zen-coder-huggingface", daemon=True).start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
