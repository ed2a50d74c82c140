"""The serving benchmark's client side (benchmarks/serve_latency.py): the request an editor sends,
the stream it reads, the one-at-a-time transformers baseline and the replay of sessions.

Checked once against broken variants by hand: `sse_data` keeping the `data:` field name,
`FirstToken` taking the prompt's `put` for the first token, the replay sending a session's
requests out of order and `split_levels` giving two levels the same sessions each fail a test.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve_latency as bench
from editing_sessions import Edit, Session, Typing, debounced_requests

EDIT = Edit("r", "c", "a.py", "Python", "def f(x):\n    ", "return x + 1", "\n\nprint(f(2))\n")


def _sessions(count: int) -> list[Session]:
    return [Session(n, EDIT, debounced_requests(n, EDIT, Typing())) for n in range(count)]


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
def baseline(hf_folder) -> bench.TransformersBaseline:
    return bench.TransformersBaseline(hf_folder, max_tokens=8)


def test_the_baseline_prompt_is_the_fill_in_the_middle_layout(baseline):
    request = debounced_requests(0, EDIT, Typing())[-1]
    roles = baseline.roles
    text = bench.fim_prompt(request, roles)
    assert text == (
        "<|path|>a.py<|lang|>Python<|fim_prefix|>def f(x):\n    return x + 1"
        "<|fim_suffix|>\n\nprint(f(2))\n<|fim_middle|>"
    )
    ids = baseline.prompt_ids(request)
    assert roles.ids["<|fim_middle|>"] == ids[-1]  # role tokens are tokens, not their spelling


def test_the_first_token_is_the_second_put_of_generate():
    streamer = bench.FirstToken()
    streamer.put(torch.tensor([[1, 2, 3]]))  # generate puts the prompt first
    assert streamer.first is None
    streamer.put(torch.tensor([4]))
    first = streamer.first
    streamer.put(torch.tensor([5]))
    assert first is not None and streamer.first == first


def test_the_baseline_answers_one_request_at_a_time(baseline):
    sessions = _sessions(3)
    run = asyncio.run(bench.replay(baseline, sessions, concurrency=3, realtime=False))
    assert len(run.answers) == sum(len(session.requests) for session in sessions)
    for answer in run.answers:
        assert 0 < answer.ttft < answer.latency
        assert 0 < answer.completion_tokens <= 8 and answer.cached_tokens == 0
    # One worker and three editors: requests wait for each other.
    assert sum(answer.latency for answer in run.answers) > run.seconds
    for session in sessions:
        sent = [r.index for r in run.requests if r.session == session.number]
        assert sent == list(range(len(session.requests)))  # each editor in its own order
    summary = run.summary()
    assert summary["requests"] == len(run.answers) and summary["prefix_cache_share"] == 0
    assert summary["ttft_p50"] <= summary["latency_p50"]


def test_the_same_answers_agree_and_levels_get_their_own_sessions(baseline):
    sessions = _sessions(2)
    first = asyncio.run(bench.replay(baseline, sessions, concurrency=1, realtime=False))
    again = asyncio.run(bench.replay(baseline, sessions, concurrency=2, realtime=False))
    assert bench.agreement(again, first) == 1.0  # greedy: the same text whatever the order
    workload = bench.Workload(levels=(1, 2), sessions=1, max_requests=3, max_tokens=8)
    levels = bench.split_levels(_sessions(3), workload)
    assert [[s.number for s in group] for group in levels.values()] == [[0], [1, 2]]
    with pytest.raises(bench.ZenCoderError, match="editing sessions"):
        bench.split_levels(_sessions(2), workload)
