"""A continuous-batching engine for a native zen-coder model, built for editors' keystrokes.

One background thread runs the model. At every step it admits waiting requests into free slots,
drops cancelled ones, and runs one forward pass over every active slot, each with as many new
tokens as it has (its prompt's uncached rest, or its last token and a few drafted ones), padded
to the longest. So requests join and leave between any two tokens, and eight requests cost
about one forward pass per token instead of eight.

Each slot keeps its key/value cache after its request ends (`slots.SlotCaches`). The next
request goes to the idle slot whose cached tokens share the longest prefix with its own, so a
keystroke that adds a character recomputes a few tokens, not the whole prompt. Greedy requests
draft tokens by prompt lookup (`speculation.PromptLookup`) and verify them in the same forward
pass; a slot's length is committed only up to the accepted tokens, so rejected keys are simply
overwritten later. Text streams through `stopping.TextCutter`, which applies stop sequences and
the editor's line rules.

Long prompt rests (more than fit the step's padding) are computed alone in chunks, one chunk per
step, so a new long prompt delays the others' next tokens by one chunk at most.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.channels import ChannelTables
from zen_coder.inference.native import torch_dtype
from zen_coder.inference.slots import Channels, Slot, SlotCaches, choose_slot
from zen_coder.inference.speculation import PromptLookup, accepted
from zen_coder.inference.stopping import CutOff, TextCutter
from zen_coder.model.folder import load_model
from zen_coder.model.model import ZenCoder, sample_token

LOG = logging.getLogger(__name__)
# A prompt rest of up to this many tokens joins the batched step instead of its own pass.
BATCHED_PROMPT = 8
FINISH_REASONS = ("stop", "length", "cancelled", "error")

__all__ = ["ChannelTables", "Channels", "Engine", "EngineRequest", "EngineStats", "Event", "Stream"]


@dataclass(frozen=True)
class EngineRequest:
    """One completion. `ids` are the prompt's tokens as the model reads them (BOS included:
    `Engine.encode` makes them); `prefix` is the text before the cursor, which the cut-off's
    "auto" rules read (the cursor line's indentation). `times`, when given, is each prompt
    token's temporal position (a prompt holding the file's history, changes of several times,
    as `prepare` writes it); otherwise every token has `channels.time`. Generated tokens take
    the last prompt token's time, as `ZenCoder.generate` carries it over. A greedy request
    (temperature 0) with `speculate` drafts tokens by prompt lookup; its tokens are the same
    either way."""

    ids: list[int]
    channels: Channels = field(default_factory=Channels)
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    cutoff: CutOff = field(default_factory=CutOff)
    client: str | None = None  # a newer request from the same client cancels this one
    speculate: bool = True
    prefix: str = ""
    times: list[int] | None = None
    ignore_eos: bool = False  # run to max_tokens (benchmarks of models with random weights)
    # A time limit from submission: past it the completion ends with what it has ("length"),
    # as llama.cpp's t_max_predict_ms; an editor prefers a shorter completion to a late one.
    max_seconds: float | None = None

    def prompt_times(self) -> list[int]:
        return list(self.times) if self.times is not None else [self.channels.time] * len(self.ids)


@dataclass(frozen=True)
class Event:
    """One streamed piece of a completion; the last has a `finish_reason` ("stop", "length",
    "cancelled", or "error" when the model failed)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose keys came from a slot's cache
    completion_tokens: int


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started, and its state now (read by /metrics)."""

    slots: int
    active: int
    queued: int
    requests: int
    prompt_tokens: int
    cached_tokens: int
    prefix_hits: int  # requests that resumed a slot's cache
    completion_tokens: int
    steps: int
    drafted_tokens: int
    accepted_tokens: int
    cancelled: int


class Stream:
    """A request's events, in order, from the engine's thread to any consumer: iterate it
    (blocking), or `async for` it in an event loop (no thread waits). `token_ids` are the tokens
    generated so far, the model's end of text excluded."""

    def __init__(self, request: EngineRequest, wake: threading.Condition) -> None:
        self.request = request
        self.submitted = time.monotonic()
        self.token_ids: list[int] = []
        self._events: collections.deque[Event] = collections.deque()
        self._condition = threading.Condition()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._cancelled = False
        self._wake = wake

    def cancel(self) -> None:
        """Stop generating; the stream ends with a "cancelled" event (unless already ended)."""
        self._cancelled = True
        with self._wake:
            self._wake.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def get(self, timeout: float | None = None) -> Event:
        """The next event, waiting for it."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._events, timeout):
                raise TimeoutError("no event from the engine in time")
            return self._events.popleft()

    async def next(self) -> Event:
        """The next event, awaited: the engine's thread wakes this loop when it comes."""
        loop = asyncio.get_running_loop()
        while True:
            with self._condition:
                if self._events:
                    return self._events.popleft()
                arrived = asyncio.Event()
                self._waiter = (loop, arrived)
            await arrived.wait()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.get()
            yield event
            if event.finish_reason is not None:
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        """The events as they come; those that arrived while the consumer was busy come as one
        (their texts joined, the last one's reason and counts). A server streaming to many
        clients then sends fewer, larger pieces as its load grows, instead of falling behind
        the engine one token at a time."""
        while True:
            event = self._joined(await self.next())
            yield event
            if event.finish_reason is not None:
                return

    def _joined(self, first: Event) -> Event:
        """`first` and every event already waiting after it, as one."""
        with self._condition:
            waiting: list[Event] = []
            last = first
            while self._events and last.finish_reason is None:
                last = self._events.popleft()
                waiting.append(last)
        if not waiting:
            return first
        text = first.text + "".join(event.text for event in waiting)
        return dataclasses.replace(waiting[-1], text=text)

    def text(self) -> tuple[str, Event]:
        """The whole completion (blocking) and its last event, which holds the reason and usage."""
        pieces = list(self)
        return "".join(event.text for event in pieces), pieces[-1]

    def _put(self, event: Event) -> None:
        with self._condition:
            self._events.append(event)
            self._condition.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, arrived = waiter
            if not loop.is_closed():
                loop.call_soon_threadsafe(arrived.set)


class IncrementalDecoder:
    """Token ids to text as they come: a token that ends in the middle of a character (byte-level
    tokens) waits for the next, and a window is re-decoded so that decoders that treat a text's
    first token specially (leading spaces) still give each piece once."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window decoded to find the new text starts here
        self.read = 0  # ... and the text of ids[start:read] was already given

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        done = self._decode(self.ids[self.start : self.read])
        text = self._decode(self.ids[self.start :])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self.start, self.read = self.read, len(self.ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Whatever is left at the end, incomplete characters included."""
        done = self._decode(self.ids[self.start : self.read])
        text = self._decode(self.ids[self.start :])
        self.start = self.read = len(self.ids)
        return text[len(done) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


@dataclass
class Running:
    """A request in a slot. `pending` is what the next forward pass feeds: the prompt's uncached
    rest while `in_prompt`, else the last generated token (whose keys are not cached yet)."""

    stream: Stream
    slot: Slot
    pending: list[int]
    times: list[int]  # the prompt's; later tokens take its last
    cached: int
    cutter: TextCutter
    decoder: IncrementalDecoder
    lookup: PromptLookup | None
    generator: torch.Generator | None
    in_prompt: bool = True
    generated: int = 0
    drafts: list[int] = field(default_factory=list)

    @property
    def request(self) -> EngineRequest:
        return self.stream.request

    def feed(self) -> list[int]:
        return self.pending + self.drafts

    def times_from(self, start: int, count: int) -> list[int]:
        """The times of the `count` tokens from position `start`."""
        last = len(self.times) - 1
        return [self.times[min(index, last)] for index in range(start, start + count)]


class Engine:
    """The model behind a request queue, run by one background thread (see the module's doc).

    `slots` requests run at once, each with a cache of `max_length` positions (the model's
    context length by default): prompt and completion together. `speculative_tokens` drafted
    tokens at most per request and step, found by n-grams of up to `ngram` tokens, and only as
    many as keep a step within `step_tokens` fed tokens: every row of a step is padded to the
    longest, so drafts pay off when few requests run (a batch of eight already keeps the
    processor busy; on CPU, eight rows of nine tokens cost about twice eight rows of one).
    A prompt rest too long to join a step is computed alone, `prefill_chunk` tokens per step
    (larger on a GPU, where a longer chunk costs little more).
    """

    def __init__(
        self,
        model: ZenCoder,
        tokenizer: RoleTokenizer,
        *,
        slots: int = 8,
        max_length: int | None = None,
        speculative_tokens: int = 8,
        ngram: int = 3,
        step_tokens: int = 16,
        prefill_chunk: int = 256,
    ) -> None:
        if slots < 1:
            raise ZenCoderError(f"the engine needs at least one slot, not {slots}")
        self.model = model.eval()
        # A copy that reads special tokens spelled in a prompt ("<|fim_prefix|>") as those
        # tokens, as the prompt formats spell them; the caller's tokenizer keeps its setting.
        self.tokenizer = Tokenizer.from_str(tokenizer.tokenizer.to_str())
        self.tokenizer.encode_special_tokens = False
        self.roles = tokenizer
        self.eos_id = tokenizer.eos_id
        weight = model.embed.weight
        self.device = weight.device
        context = model.config.context_length
        self.capacity = min(max_length or context, context)
        self.speculative_tokens, self.ngram = max(0, speculative_tokens), ngram
        self.step_tokens = step_tokens
        self.prefill_chunk = max(1, prefill_chunk)
        self.spare = max(self.speculative_tokens + 1, BATCHED_PROMPT)
        self.caches = SlotCaches(
            model.config, slots, self.capacity, self.spare, self.device, weight.dtype
        )
        self.slots = [Slot(index) for index in range(slots)]
        self.tables = ChannelTables()  # names of the channels' ids; from_folder reads a model's
        self._condition = threading.Condition()
        self._waiting: collections.deque[Stream] = collections.deque()
        self._running: list[Running] = []
        self._clients: dict[str, Stream] = {}
        self._counts = collections.Counter()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="zen-coder-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_folder(
        cls, folder: Path, *, device: str = "cpu", dtype: str | None = None, **options: Any
    ) -> Engine:
        """An engine for the native model folder `folder` (a run's `model/`), with its channel
        tables as `tables`; `options` are the constructor's."""
        model = load_model(folder).to(device=torch.device(device), dtype=torch_dtype(dtype))
        engine = cls(model, read_tokenizer(folder), **options)
        engine.tables = ChannelTables.of_folder(folder)
        return engine

    # -- the public side ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """A prompt's tokens as the model reads them: BOS where the tokenizer starts texts with
        one, and special tokens spelled in the text ("<|fim_prefix|>") as those tokens."""
        start = [] if self.roles.bos_id is None else [self.roles.bos_id]
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return start + encoding.ids

    def submit(self, request: EngineRequest) -> Stream:
        """Queue `request`; its events arrive on the returned stream. A request from a client
        with an older one still running cancels that one (the user typed on)."""
        self._check(request)
        stream = Stream(request, self._condition)
        with self._condition:
            if self._closed:
                raise ZenCoderError("the engine is closed; start a new one")
            if request.client is not None:
                older = self._clients.get(request.client)
                if older is not None:
                    older.cancel()
                self._clients[request.client] = stream
            self._waiting.append(stream)
            self._counts["requests"] += 1
            self._condition.notify_all()
        return stream

    def stats(self) -> EngineStats:
        with self._condition:
            counts = self._counts
            return EngineStats(
                slots=len(self.slots),
                active=len(self._running),
                queued=len(self._waiting),
                requests=counts["requests"],
                prompt_tokens=counts["prompt_tokens"],
                cached_tokens=counts["cached_tokens"],
                prefix_hits=counts["prefix_hits"],
                completion_tokens=counts["completion_tokens"],
                steps=counts["steps"],
                drafted_tokens=counts["drafted_tokens"],
                accepted_tokens=counts["accepted_tokens"],
                cancelled=counts["cancelled"],
            )

    def close(self) -> None:
        """Stop the thread; requests still waiting or running end "cancelled"."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, request: EngineRequest) -> None:
        if not request.ids:
            raise ZenCoderError("the request's prompt has no tokens; give at least one")
        if len(request.ids) >= self.capacity:
            raise ZenCoderError(
                f"the prompt has {len(request.ids)} tokens and the engine holds {self.capacity} "
                "per request; shorten the prompt or start the engine with a larger max_length"
            )
        if request.max_tokens < 0:
            raise ZenCoderError(f"max_tokens is {request.max_tokens}; it must be 0 or more")
        vocabulary = self.model.config.vocab_size
        if not all(0 <= token < vocabulary for token in request.ids):
            raise ZenCoderError(f"a prompt token is outside the vocabulary of {vocabulary} tokens")
        if request.times is not None and len(request.times) != len(request.ids):
            raise ZenCoderError(
                f"the request has {len(request.times)} times for {len(request.ids)} tokens; "
                "give one time per prompt token, or none"
            )

    # -- the engine's thread --------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while self._wait_for_work():
                try:
                    self._step()
                except Exception:  # the model failed: end these requests, keep serving
                    LOG.exception("the engine's step failed; its requests end with an error")
                    for running in list(self._running):
                        self._finish(running, "error")
        with self._condition:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for stream in waiting:
            stream._put(Event("", "cancelled", len(stream.request.ids), 0, 0))
        for running in list(self._running):
            self._finish(running, "cancelled")

    def _wait_for_work(self) -> bool:
        with self._condition:
            self._condition.wait_for(lambda: self._closed or self._waiting or self._running)
            return not self._closed

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        long = [r for r in self._running if r.in_prompt and len(r.pending) > self.spare]
        if long:
            self._prefill_chunk(long[0])
        short = [r for r in self._running if r not in long]
        if short:
            self._decode(short)
        with self._condition:
            self._counts["steps"] += 1

    def _drop_cancelled(self) -> None:
        with self._condition:
            cancelled = [stream for stream in self._waiting if stream.cancelled]
            for stream in cancelled:
                self._waiting.remove(stream)
                self._counts["cancelled"] += 1
        for stream in cancelled:
            stream._put(Event("", "cancelled", len(stream.request.ids), 0, 0))
            self._forget_client(stream)
        for running in [r for r in self._running if r.stream.cancelled]:
            self._finish(running, "cancelled")

    def _admit(self) -> None:
        while True:
            with self._condition:
                if not self._waiting:
                    return
                request = self._waiting[0].request
                times = request.prompt_times()
                slot = choose_slot(self.slots, request.ids, times, request.channels)
                if slot is None:
                    return
                stream = self._waiting.popleft()
            self._start(stream, slot, times)

    def _start(self, stream: Stream, slot: Slot, times: list[int]) -> None:
        request = stream.request
        cached = slot.reusable(request.ids, times, request.channels)
        slot.start(cached, request.channels)
        greedy = request.temperature <= 0
        speculate = greedy and request.speculate and self.speculative_tokens > 0
        generator = None
        if not greedy:
            generator = torch.Generator(self.device).manual_seed(request.seed)
        self._running.append(
            Running(
                stream=stream,
                slot=slot,
                pending=list(request.ids[cached:]),
                times=times,
                cached=cached,
                cutter=TextCutter(request.cutoff, request.prefix),
                decoder=IncrementalDecoder(self.tokenizer),
                lookup=PromptLookup(request.ids, self.ngram) if speculate else None,
                generator=generator,
            )
        )
        with self._condition:
            self._counts["prompt_tokens"] += len(request.ids)
            self._counts["cached_tokens"] += cached
            self._counts["prefix_hits"] += cached > 0

    def _prefill_chunk(self, running: Running) -> None:
        """Compute a chunk of a long prompt rest alone, leaving at least its last token for a
        batched step (whose logits give the first completion token)."""
        chunk = running.pending[: min(self.prefill_chunk, len(running.pending) - 1)]
        start = len(running.slot.tokens)
        self._forward([running], [chunk], last_only=True)
        running.slot.extend(chunk, running.times_from(start, len(chunk)))
        del running.pending[: len(chunk)]

    def _decode(self, rows: list[Running]) -> None:
        budget = min(self.speculative_tokens, self.step_tokens // len(rows) - 1)
        for running in rows:
            running.drafts = self._drafts(running, budget)
        feeds = [running.feed() for running in rows]
        logits = self._forward(rows, feeds, last_only=False)
        choices = logits.argmax(dim=-1).tolist()  # [A, T]: greedy rows read theirs from here
        for index, (running, feed) in enumerate(zip(rows, feeds, strict=True)):
            last = len(running.pending) - 1
            if running.lookup is None:
                if running.generator is None:
                    tokens = [choices[index][last]]
                else:
                    tokens = [self._sample(running, logits[index, last])]
                committed = len(feed)
            else:
                predicted = choices[index][last:]
                count = accepted(running.drafts, predicted)
                tokens = [*running.drafts[:count], predicted[count]]
                committed = len(running.pending) + count
                with self._condition:
                    self._counts["drafted_tokens"] += len(running.drafts)
                    self._counts["accepted_tokens"] += count
            start = len(running.slot.tokens)
            running.slot.extend(feed[:committed], running.times_from(start, committed))
            running.in_prompt, running.drafts = False, []
            self._emit(running, tokens)

    def _drafts(self, running: Running, budget: int) -> list[int]:
        """Up to `budget` tokens to verify after the pending one: none during the prompt, and
        never past the request's token limit or the slot's capacity."""
        if running.lookup is None or running.in_prompt:
            return []
        room = min(
            budget,
            running.request.max_tokens - running.generated - 1,
            self.capacity - len(running.slot.tokens) - len(running.pending),
        )
        return running.lookup.draft(room)

    def _sample(self, running: Running, logits: torch.Tensor) -> int:
        request = running.request
        token = sample_token(logits[None], request.temperature, request.top_p, running.generator)
        return int(token[0])

    def _forward(
        self, rows: list[Running], feeds: list[list[int]], last_only: bool
    ) -> torch.Tensor:
        """One forward pass: row r feeds `feeds[r]` after its slot's cached tokens; logits
        [A, T, V] (T the longest feed; shorter feeds are padded and their extra logits unused).

        The pass runs over the window of slots from the lowest to the highest of the rows',
        idle slots in between as filler rows (`slots.SlotBatch`)."""
        width = max(len(feed) for feed in feeds)
        first = min(running.slot.index for running in rows)
        size = max(running.slot.index for running in rows) - first + 1
        lengths: list[int | None] = [None] * size
        tokens, times = [[0] * width] * size, [[0] * width] * size
        channels = [Channels()] * size
        for running, feed in zip(rows, feeds, strict=True):
            row, cached = running.slot.index - first, len(running.slot.tokens)
            lengths[row], channels[row] = cached, running.request.channels
            tokens[row] = feed + [feed[-1]] * (width - len(feed))
            # Padding takes the times that would follow; its outputs are unused.
            times[row] = running.times_from(cached, width)
        batch = self.caches.batch(first, lengths, width)
        device = self.device

        def channel(name: str) -> torch.Tensor:
            values = torch.tensor([[getattr(c, name)] for c in channels], device=device)
            return values.expand(size, width)

        output = self.model(
            torch.tensor(tokens, device=device),
            repo=channel("repo"),
            language=channel("language"),
            time=torch.tensor(times, device=device),
            cache=batch,
            positions=batch.positions,
            key_mask=batch.key_mask,
            last_only=last_only,
        )
        wanted = torch.tensor([running.slot.index - first for running in rows], device=device)
        return output.logits.index_select(0, wanted)

    def _emit(self, running: Running, tokens: list[int]) -> None:
        """Hand the new tokens to the request: stop at EOS, the token limit, the slot's
        capacity or the cut-off; otherwise the last one is fed at the next step."""
        request = running.request
        if running.generated >= request.max_tokens:
            self._finish(running, "length")  # max_tokens 0: the prompt only warms the cache
            return
        reason = None
        if self.eos_id in tokens and not request.ignore_eos:
            tokens, reason = tokens[: tokens.index(self.eos_id)], "stop"
        room = request.max_tokens - running.generated
        if len(tokens) >= room:
            tokens = tokens[:room]
            reason = reason or "length"
        running.generated += len(tokens)
        running.stream.token_ids.extend(tokens)
        with self._condition:
            self._counts["completion_tokens"] += len(tokens)
        if running.lookup is not None:
            running.lookup.extend(tokens)
        piece = running.cutter.push(running.decoder.push(tokens))
        if piece:
            running.stream._put(self._event(running, piece, None))
        if running.cutter.done:
            reason = "stop"
        elif reason is None and (
            len(running.slot.tokens) + 1 > self.capacity or self._late(running)
        ):
            reason = "length"
        if reason is not None:
            self._finish(running, reason)
        else:
            running.pending = tokens[-1:]

    @staticmethod
    def _late(running: Running) -> bool:
        limit = running.request.max_seconds
        return limit is not None and time.monotonic() - running.stream.submitted > limit

    def _finish(self, running: Running, reason: str) -> None:
        text = ""
        if reason not in ("cancelled", "error"):
            text = running.cutter.push(running.decoder.flush()) + running.cutter.flush()
            reason = running.cutter.reason or reason
        running.slot.busy = False
        running.slot.last_used = time.monotonic()
        self._running.remove(running)
        if reason == "cancelled":
            with self._condition:
                self._counts["cancelled"] += 1
        running.stream._put(self._event(running, text, reason))
        self._forget_client(running.stream)

    def _forget_client(self, stream: Stream) -> None:
        client = stream.request.client
        with self._condition:
            if client is not None and self._clients.get(client) is stream:
                del self._clients[client]

    @staticmethod
    def _event(running: Running, text: str, reason: str | None) -> Event:
        return Event(
            text=text,
            finish_reason=reason,
            prompt_tokens=len(running.request.ids),
            cached_tokens=running.cached,
            completion_tokens=running.generated,
        )
