"""The serving benchmark's client side (benchmarks/serve_latency.py): the request an editor sends,
the stream it reads, and a replay of sessions against two real servers, the native engine and
the one-at-a-time transformers baseline on the model's export.

Checked once against broken variants by hand: `sse_data` keeping the `data:` field name, the
replay sending a session's requests out of order, `ReusablePrompts` counting a whole prompt as
reusable and `split_levels` giving two levels the same sessions each fail a test.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve_latency as bench
from editing_sessions import Edit, Session, Typing, debounced_requests

from tests.models import LANGUAGE_TABLE, NO_REPOSITORIES, native_config
from tests.serving.running import running
from zen_coder.model.folder import save_model
from zen_coder.model.model import ZenCoder
from zen_coder.serving.app import create_app
from zen_coder.serving.backends import open_backend
from zen_coder.serving.settings import ServerSettings

SETTINGS = ServerSettings(concurrent_per_key=16)
EDIT = Edit("r", "c", "a.py", "Python", "def f(x):\n    ", "return x + 1", "\n\nprint(f(2))\n")


def _sessions(count: int) -> list[Session]:
    """`count` editors typing the same line into files of different names."""
    edits = [replace(EDIT, path=f"module_{n}.py") for n in range(count)]
    return [Session(n, edit, debounced_requests(n, edit, Typing())) for n, edit in enumerate(edits)]


def test_server_sent_events_are_read_as_an_event_source_reads_them():
    stream = [
        ": a comment",
        "",
        'data: {"choices": [{"index": 0, "text": "re"}]}',
        "event: ignored",
        'data:{"choices": [], "usage": {"prompt_tokens": 3}}',
        "data: [DONE]",
    ]
    assert [bench.sse_data(line) for line in stream] == [
        None,
        None,
        '{"choices": [{"index": 0, "text": "re"}]}',
        None,
        '{"choices": [], "usage": {"prompt_tokens": 3}}',
        bench.DONE,
    ]


def test_the_request_is_an_openai_completion_with_a_suffix_path_and_language():
    request = debounced_requests(3, EDIT, Typing())[1]
    body = bench.completion_body(request, "model", 64)
    assert body["prompt"] == "def f(x):\n    return x " and body["suffix"] == EDIT.after
    assert (body["path"], body["language"], body["user"]) == ("a.py", "Python", "session-3")
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"]) == (64, 0.0)


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory, tokenizer_folder) -> Path:
    """The tests' small native model as it starts, before training: the card's techniques are
    still no-ops, so its Hugging Face export (which cannot hold them) computes the same."""
    config = native_config(tokenizer_folder)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("plain") / "model"
    weights = ZenCoder(config).state_dict()
    save_model(folder, config, weights, LANGUAGE_TABLE, tokenizer_folder, repos=NO_REPOSITORIES)
    return folder


@pytest.fixture(scope="module")
def servers(plain_folder, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """That model behind the real server, and its Hugging Face export behind the same server on
    the transformers backend: (native URL, baseline URL, the export)."""
    native_folder = plain_folder
    hf = bench.export_model(native_folder, tmp_path_factory.mktemp("export"))
    with (
        running(create_app(open_backend(str(native_folder), backend="native"), SETTINGS)) as a,
        running(create_app(open_backend(str(hf), backend="huggingface"), SETTINGS)) as b,
    ):
        yield a, b, hf


def _replay(url: str, name: str, sessions: list[Session], concurrency: int) -> bench.Run:
    backend = bench.ServerBackend(name, url, bench.served_model(url, None), max_tokens=12)

    async def run() -> bench.Run:
        try:
            return await bench.replay(backend, sessions, concurrency, realtime=False)
        finally:
            await backend.close()

    return asyncio.run(run())


def test_throughput_is_measured_while_every_editor_is_busy():
    """A request that straddles the end of the busy time counts the share of its streaming time
    before it; those after it (the tail) count only in the whole run's figure. Checked once by
    hand: counting a straddling request whole, or the busy time as the run's, fails it."""

    def answer(sent: float, ttft: float, latency: float, tokens: int) -> bench.Answer:
        return bench.Answer(ttft, latency, 9, 0, tokens, "", sent)

    answers = [answer(0.0, 1.0, 3.0, 20), answer(2.5, 0.5, 4.5, 40), answer(7.0, 1.0, 2.0, 10)]
    run = bench.Run("native", 2, seconds=9.0, busy_seconds=5.0, answers=answers)
    # 20 tokens by t=3; the second streams 40 from t=3 to t=7, half of it by t=5; the third after.
    assert run.busy_tokens() == pytest.approx(40.0)
    summary = run.summary()
    assert summary["tokens_per_second"] == pytest.approx(40.0 / 5.0)
    assert summary["tokens_per_second_whole"] == pytest.approx(70.0 / 9.0)


def test_both_servers_answer_the_replay_with_the_same_completions(servers, plain_folder):
    sessions = _sessions(3)
    native = _replay(servers[0], bench.NATIVE, sessions, concurrency=3)
    baseline = _replay(servers[1], bench.BASELINE, sessions, concurrency=3)
    reusable = bench.ReusablePrompts(plain_folder, max_tokens=12)
    prompts = {
        (session.number, index): counts
        for session in sessions
        for index, counts in enumerate(reusable.of(session))
    }
    for run in (native, baseline):
        assert len(run.answers) == sum(len(session.requests) for session in sessions)
        for session in sessions:  # each editor sends its requests in order
            sent = [r.index for r in run.requests if r.session == session.number]
            assert sent == list(range(len(session.requests)))
        assert 0 < run.busy_seconds <= run.seconds
        for request, answer in zip(run.requests, run.answers, strict=True):
            assert 0 <= answer.sent < run.seconds
            assert 0 < answer.ttft <= answer.latency
            assert answer.completion_tokens <= 12
            assert answer.prompt_tokens == prompts[request.session, request.index][0]
    figures = bench.ratios(native, baseline, prompts)
    assert figures["prompts_match"] == 1.0 and figures["agreement"] == 1.0
    assert baseline.summary()["prefix_cache_share"] == 0
    # The engine serves a keystroke's prompt from the slot of the editor's last one, never more
    # than the two share; a first keystroke finds at most the start all files' prompts share.
    for request, answer in zip(native.requests, native.answers, strict=True):
        ceiling = prompts[request.session, request.index][1]
        assert answer.cached_tokens <= (ceiling if request.index else 8)
    floor = bench.bare_generate(servers[2], None, baseline, reusable)
    assert [answer.completion_tokens for answer in floor.answers] == [
        max(answer.completion_tokens, 1) for answer in baseline.answers
    ]
    assert [answer.prompt_tokens for answer in floor.answers] == [
        answer.prompt_tokens for answer in baseline.answers
    ]
    assert figures["reuse_ceiling"] > 0.3  # short prompts: the suffix is much of each
    assert figures["prefix_cache_share"] >= figures["reuse_ceiling"] - 0.05


def test_levels_get_their_own_sessions():
    workload = bench.Workload(levels=(1, 2), sessions=1, requests_per_session=3, max_tokens=8)
    levels = bench.split_levels(_sessions(3), workload)
    assert [[s.number for s in group] for group in levels.values()] == [[0], [1, 2]]
    with pytest.raises(bench.ZenCoderError, match="editing sessions"):
        bench.split_levels(_sessions(2), workload)


def test_the_reusable_tokens_are_the_shared_start_of_consecutive_prompts():
    assert bench.shared_start([1, 2, 3], [1, 2, 4, 5]) == 2
    assert bench.shared_start([1, 2], [1, 2, 3]) == 2
    assert bench.shared_start([], [1]) == 0
