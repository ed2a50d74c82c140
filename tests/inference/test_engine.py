"""The continuous-batching engine computes what `ZenCoder.generate` computes for each request
alone, whatever else runs beside it, whichever slot's cache it resumes, and whether or not it
drafts tokens; and it ends, cancels and reports requests as an editor needs."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import torch

from tests.inference.prompts import PROMPTS, ascii_piece
from tests.models import LANGUAGE_TABLE, native_config
from zen_coder.data.tokenizer import EOS, read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.engine import Channels, Engine, EngineRequest
from zen_coder.inference.generation import cut_at_stop
from zen_coder.inference.stopping import CutOff
from zen_coder.model.folder import save_model
from zen_coder.model.model import ZenCoder

KEEP_ALL = CutOff(multiline="multi")  # no line rule: the text is every generated token's
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def roles(tokenizer_folder):
    return read_tokenizer(tokenizer_folder)


@pytest.fixture(scope="module")
def model(tokenizer_folder) -> ZenCoder:
    """The tests' small model with its history tables drawn at random and its experts' output
    scaled up (at initialization they barely move the residual stream, so routing by language
    would change no token), so that every channel changes the output: an engine that dropped or
    mixed up one would not match `generate`."""
    config = dataclasses.replace(native_config(tokenizer_folder), n_repos=4)
    torch.manual_seed(0)
    model = ZenCoder(config).eval()
    with torch.no_grad():
        model.repo.weight[1:].normal_(std=0.05)
        for block in model.blocks:
            block.moe.language.normal_(std=2.0)
            block.moe.experts.w2.normal_(std=0.5)
            block.attention.o.weight.normal_(std=0.5)
            block.attention.temporal.weight.normal_(std=2.0)
    return model


@pytest.fixture
def engine(model, roles):
    with Engine(model, roles, slots=4, speculative_tokens=4) as engine:
        yield engine


def alone(model, roles, request: EngineRequest) -> list[int]:
    """The request's tokens from `ZenCoder.generate`, one prompt, no batch, no cache reuse."""
    tokens = torch.tensor([request.ids])
    full = torch.full_like(tokens, 0)
    channels = request.channels
    generator = torch.Generator().manual_seed(request.seed)
    output = model.generate(
        tokens,
        request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        eos_id=roles.eos_id,
        repo=full + channels.repo,
        language=full + channels.language,
        time=torch.tensor([request.prompt_times()]),
        generator=generator,
    )[0, len(request.ids) :].tolist()
    return output[: output.index(roles.eos_id)] if roles.eos_id in output else output


def requests(engine, **fields) -> list[EngineRequest]:
    channels = [Channels(), Channels(repo=1, language=3, time=40), Channels(repo=3, time=7)]
    return [
        EngineRequest(
            ids=engine.encode(prompt),
            channels=channels[index % len(channels)],
            max_tokens=NEW_TOKENS,
            cutoff=KEEP_ALL,
            **fields,
        )
        for index, prompt in enumerate([*PROMPTS, PROMPTS[1] * 3])
    ]


@pytest.mark.parametrize("speculate", [False, True])
def test_concurrent_greedy_requests_match_generate_alone(engine, model, roles, speculate):
    """Checked by hand to fail: with the key mask allowing one position too many
    (`<= positions + 1` in SlotBatch) every request's tokens differ from generate's; with the
    engine committing rejected drafts to the slot (no roll-back), the speculative run's do."""
    batch = requests(engine, speculate=speculate)
    streams = [engine.submit(request) for request in batch]
    for stream, request in zip(streams, batch, strict=True):
        text, last = stream.text()
        assert stream.token_ids == alone(model, roles, request)
        assert text == roles.tokenizer.decode(stream.token_ids, skip_special_tokens=False)
        assert last.completion_tokens == len(stream.token_ids)
        assert last.finish_reason in ("length", "stop")
    stats = engine.stats()
    assert stats.steps < sum(len(stream.token_ids) for stream in streams)  # they shared steps
    if speculate:
        assert stats.accepted_tokens > 0  # random models repeat themselves: drafts were used
    else:
        assert stats.drafted_tokens == 0


def test_more_requests_than_slots_wait_and_still_match(model, roles):
    with Engine(model, roles, slots=2, speculative_tokens=0) as engine:
        batch = requests(engine) * 2
        streams = [engine.submit(request) for request in batch]
        for stream, request in zip(streams, batch, strict=True):
            stream.text()
            assert stream.token_ids == alone(model, roles, request)


def test_the_next_keystroke_resumes_the_slot_holding_its_prefix(engine, model, roles):
    """Checked by hand to fail: with `Slot.reusable` claiming one more cached token than the
    slot holds, the later requests' tokens differ from generate's."""
    text = PROMPTS[1]
    first = EngineRequest(ids=engine.encode(text), max_tokens=NEW_TOKENS, cutoff=KEEP_ALL)
    other = EngineRequest(ids=engine.encode(PROMPTS[0]), max_tokens=4, cutoff=KEEP_ALL)
    for request in (first, other):
        engine.submit(request).text()
    # The user typed on: the same text and a few more characters, in the same channels.
    typed = engine.encode(text + "pa")
    later = EngineRequest(ids=typed, max_tokens=NEW_TOKENS, cutoff=KEEP_ALL)
    stream = engine.submit(later)
    _, last = stream.text()
    assert last.cached_tokens >= len(first.ids) - 2
    assert stream.token_ids == alone(model, roles, later)
    # The whole earlier prompt plus its completion is cached: a request continuing it reuses
    # more than its prompt.
    continued = EngineRequest(
        ids=typed + stream.token_ids[:5], max_tokens=NEW_TOKENS, cutoff=KEEP_ALL
    )
    stream = engine.submit(continued)
    _, last = stream.text()
    assert last.cached_tokens > len(typed)
    assert stream.token_ids == alone(model, roles, continued)
    # Other channels change every key: no reuse.
    elsewhere = dataclasses.replace(continued, channels=Channels(repo=2))
    stream = engine.submit(elsewhere)
    _, last = stream.text()
    assert last.cached_tokens == 0
    assert stream.token_ids == alone(model, roles, elsewhere)
    assert engine.stats().prefix_hits == 2


def test_an_idle_slot_between_busy_ones_keeps_its_cache(engine, model, roles):
    """Slots 0 and 2 run while slot 1, idle between them, holds a prefix: the step's filler row
    for slot 1 must not touch its cache. Checked by hand to fail: with filler rows placed at
    position 0 instead of past the capacity, the last request's tokens differ from generate's."""
    texts = [PROMPTS[0], PROMPTS[1], PROMPTS[2] + "1, 2"]
    first = [EngineRequest(ids=engine.encode(text), max_tokens=2) for text in texts]
    streams = [engine.submit(request) for request in first]
    for stream in streams:
        stream.text()
    later = [
        EngineRequest(ids=engine.encode(text + " x"), max_tokens=NEW_TOKENS, cutoff=KEEP_ALL)
        for text in texts
    ]
    outer = [engine.submit(later[0]), engine.submit(later[2])]
    for stream in outer:
        stream.text()
    stream = engine.submit(later[1])
    _, last = stream.text()
    assert last.cached_tokens > 0
    assert stream.token_ids == alone(model, roles, later[1])


def test_a_prompt_of_several_times_matches_generate_and_reuses_by_time(engine, model, roles):
    """A prompt holding the file's history has tokens of several times; the temporal bias then
    changes the output. Checked by hand to fail: with the engine feeding `channels.time` for
    every token, the tokens differ from generate's (and swapping the repository and language
    channels fails the tests above)."""
    ids = engine.encode(PROMPTS[1] * 2)
    half = len(ids) // 2
    times = [0] * half + [300] * (len(ids) - half)
    request = EngineRequest(ids=ids, times=times, max_tokens=NEW_TOKENS, cutoff=KEEP_ALL)
    stream = engine.submit(request)
    stream.text()
    assert stream.token_ids == alone(model, roles, request)
    assert stream.token_ids != alone(model, roles, dataclasses.replace(request, times=None))
    # The same tokens at other times from the change on: only the earlier part is reused.
    later = dataclasses.replace(request, times=[0] * half + [30] * (len(ids) - half))
    stream = engine.submit(later)
    _, last = stream.text()
    assert last.cached_tokens == half
    assert stream.token_ids == alone(model, roles, later)


def test_sampling_follows_the_seed_as_generate_does(engine, model, roles):
    batch = requests(engine, temperature=1.0, top_p=0.9, seed=11)
    streams = [engine.submit(request) for request in batch]
    for stream, request in zip(streams, batch, strict=True):
        stream.text()
        assert stream.token_ids == alone(model, roles, request)


def test_long_prompts_are_computed_in_chunks(model, roles):
    with Engine(model, roles, slots=2, prefill_chunk=16) as engine:
        long = EngineRequest(
            ids=engine.encode(PROMPTS[1] * 4), max_tokens=NEW_TOKENS, cutoff=KEEP_ALL
        )
        short = EngineRequest(ids=engine.encode(PROMPTS[0]), max_tokens=NEW_TOKENS)
        streams = [engine.submit(long), engine.submit(short)]
        for stream, request in zip(streams, (long, short), strict=True):
            stream.text()
            assert stream.token_ids == alone(model, roles, request)


def test_stop_sequences_end_the_text_before_them(engine, model, roles):
    # A random model's text is mostly bytes that are no characters: take one with some ASCII.
    fulls = [
        (request, roles.tokenizer.decode(alone(model, roles, request), skip_special_tokens=False))
        for request in requests(engine)
    ]
    request, full = next((r, text) for r, text in fulls if any(map(str.isascii, text)))
    stop = ascii_piece(full)
    stopped = dataclasses.replace(request, cutoff=CutOff(stop=(stop,), multiline="multi"))
    text, last = engine.submit(stopped).text()
    assert text == cut_at_stop(full, [stop])
    assert last.finish_reason == "stop"


def test_cancelled_and_superseded_requests_end_cancelled(engine, model, roles):
    request = dataclasses.replace(requests(engine)[0], max_tokens=200, client="editor-1")
    first = engine.submit(request)
    first.get(timeout=30)  # it runs
    second = engine.submit(dataclasses.replace(request, max_tokens=NEW_TOKENS))  # typed on
    assert list(first)[-1].finish_reason == "cancelled"
    second.text()
    assert second.token_ids == alone(model, roles, requests(engine)[0])
    third = engine.submit(dataclasses.replace(request, client=None))
    third.cancel()
    assert list(third)[-1].finish_reason == "cancelled"
    assert engine.stats().cancelled == 2
    assert engine.stats().active == 0


def test_end_of_text_stops_unless_ignored(model, roles):
    """The random model never ends by itself: make a token it generates the end of text."""
    with Engine(model, roles, slots=2) as engine:
        request = EngineRequest(ids=engine.encode(PROMPTS[2]), max_tokens=NEW_TOKENS)
        tokens = alone(model, roles, request)
    end = tokens[len(tokens) // 2]
    ended = dataclasses.replace(roles, ids={**roles.ids, EOS: end})
    with Engine(model, ended, slots=2) as engine:
        stream = engine.submit(request)
        _, last = stream.text()
        assert stream.token_ids == tokens[: tokens.index(end)]
        assert last.finish_reason == "stop"
        stream = engine.submit(dataclasses.replace(request, ignore_eos=True))
        _, last = stream.text()
        assert stream.token_ids == tokens
        assert last.finish_reason == "length"


def test_a_request_past_its_time_limit_ends_with_what_it_has(engine, model, roles):
    request = dataclasses.replace(requests(engine)[1], max_seconds=0.0)
    stream = engine.submit(request)
    _, last = stream.text()
    assert last.finish_reason == "length"
    assert stream.token_ids == alone(model, roles, request)[:1]


def test_zero_max_tokens_only_warms_the_cache(engine):
    ids = engine.encode(PROMPTS[1])
    text, last = engine.submit(EngineRequest(ids=ids, max_tokens=0)).text()
    assert (text, last.finish_reason, last.completion_tokens) == ("", "length", 0)
    _, again = engine.submit(EngineRequest(ids=ids, max_tokens=2)).text()
    assert again.cached_tokens == len(ids) - 1


def test_events_can_be_awaited(engine, model, roles):
    batch = requests(engine)

    async def collect(request):
        return [event async for event in engine.submit(request)]

    async def together():
        return await asyncio.gather(*(collect(request) for request in batch))

    for request, events in zip(batch, asyncio.run(together()), strict=True):
        assert events[-1].finish_reason is not None
        assert all(event.finish_reason is None for event in events[:-1])
        text = "".join(event.text for event in events)
        expected = alone(model, roles, request)
        assert text == roles.tokenizer.decode(expected, skip_special_tokens=False)


def test_events_a_slow_consumer_missed_come_as_one(engine, model, roles):
    """Awaited after the engine finished, a stream is one event: the whole text, the reason and
    the counts. (Checked to fail with every event yielded on its own.)"""
    request = requests(engine)[0]
    stream = engine.submit(request)
    while engine.stats().active or engine.stats().queued:
        time.sleep(0.01)

    async def collect():
        return [event async for event in stream]

    [event] = asyncio.run(collect())
    expected = alone(model, roles, request)
    assert event.text == roles.tokenizer.decode(expected, skip_special_tokens=False)
    assert event.finish_reason is not None and event.completion_tokens == len(expected)


def test_prompts_spell_special_tokens_as_the_tokens(engine, roles):
    fim = roles.ids["<|fim_prefix|>"]
    assert fim in engine.encode("<|fim_prefix|>x = 1")
    assert fim not in roles.tokenizer.encode("<|fim_prefix|>x = 1").ids  # the caller's unchanged


def test_a_model_folder_names_its_channels(model, roles, tokenizer_folder, tmp_path):
    repos = ["<unknown>", "github.com/acme/tools", "github.com/acme/web", "local/notes"]
    folder = tmp_path / "model"
    save_model(
        folder, model.config, model.state_dict(), LANGUAGE_TABLE, tokenizer_folder, repos=repos
    )
    with Engine.from_folder(folder, slots=2) as engine:
        channels = engine.tables.channels("github.com/acme/web", "PYTHON", time=12)
        assert channels == Channels(repo=2, language=LANGUAGE_TABLE.index("Python"), time=12)
        assert engine.tables.channels("elsewhere/x", "Klingon") == Channels()
        request = EngineRequest(ids=engine.encode(PROMPTS[0]), channels=channels, max_tokens=8)
        stream = engine.submit(request)
        stream.text()
        assert stream.token_ids == alone(model, roles, request)


def test_bad_requests_are_one_line_errors(engine):
    with pytest.raises(ZenCoderError, match="no tokens"):
        engine.submit(EngineRequest(ids=[]))
    with pytest.raises(ZenCoderError, match="larger max_length"):
        engine.submit(EngineRequest(ids=[1] * 300))
    with pytest.raises(ZenCoderError, match="outside the vocabulary"):
        engine.submit(EngineRequest(ids=[10**6]))
    with pytest.raises(ZenCoderError, match="one time per prompt token"):
        engine.submit(EngineRequest(ids=[1, 2], times=[5]))
