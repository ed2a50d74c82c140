"""The OpenAI-compatible client against a real HTTP server running a real tiny model: the same
completions as the local backend, stops beyond the API's four, chat answers, parallel requests,
retries, and one-line errors."""

from __future__ import annotations

import socket
import time

import pytest

from tests.inference.openai_server import OpenAITestServer
from tests.inference.prompts import PROMPTS, ascii_piece
from zen_coder.errors import ZenCoderError
from zen_coder.inference.generation import GenerationConfig, cut_at_stop
from zen_coder.inference.native import NativeGenerator
from zen_coder.inference.remote import (
    OpenAIGenerator,
    chat_message,
    completion_from_chat,
    continuation_of,
    first_code_block,
)

GREEDY = GenerationConfig(max_new_tokens=12)
SAMPLED = GenerationConfig(n=3, temperature=1.0, max_new_tokens=12, seed=5)
FAST = {"timeout": 5.0, "retries": 2, "backoff": 0.01}


@pytest.fixture(scope="module")
def local(native_folder) -> NativeGenerator:
    return NativeGenerator(native_folder)


@pytest.fixture(scope="module")
def server(local):
    with OpenAITestServer(local) as running:
        yield running


def one_by_one(generator, prompts, config) -> list[list[str]]:
    """What a server computes: each request alone."""
    return [generator.complete([prompt], config)[0] for prompt in prompts]


def test_completions_equal_the_local_backend(server, local):
    client = OpenAIGenerator(server.url, **FAST)
    assert client.complete(PROMPTS, GREEDY) == one_by_one(local, PROMPTS, GREEDY)
    assert client.complete(PROMPTS, SAMPLED) == one_by_one(local, PROMPTS, SAMPLED)
    path, body = server.state.requests[-1]
    assert path == "/v1/completions" and body["model"] == "tiny-coder" and body["n"] == 3


def test_more_than_four_stops_are_cut_locally(server, local):
    long = GenerationConfig(max_new_tokens=40)
    full = local.complete(PROMPTS[:1], long)[0][0]
    stops = ("@@1", "@@2", "@@3", "@@4", ascii_piece(full))  # the fifth is never sent
    client = OpenAIGenerator(server.url, **FAST)
    completion = client.complete(PROMPTS[:1], GenerationConfig(max_new_tokens=40, stop=stops))
    assert completion[0][0] == cut_at_stop(full, stops) != full
    assert server.state.requests[-1][1]["stop"] == list(stops[:4])


def test_chat_answers_give_the_continuation(server, local):
    client = OpenAIGenerator(server.url, mode="chat", **FAST)
    assert client.complete(PROMPTS, GREEDY) == one_by_one(local, PROMPTS, GREEDY)
    messages = [body["messages"] for path, body in server.state.requests if "chat" in path]
    assert [{"role": "user", "content": chat_message("x = [")}] in messages


def test_prompts_are_requested_in_parallel_and_answers_kept_in_order(local):
    prompts = PROMPTS * 2
    with OpenAITestServer(local, delay=0.2) as server:
        completions = OpenAIGenerator(server.url, concurrency=3, **FAST).complete(prompts, GREEDY)
    assert completions == one_by_one(local, prompts, GREEDY)
    assert server.state.max_in_flight > 1


def test_servers_that_ignore_n_are_asked_again_with_the_next_seeds(local):
    with OpenAITestServer(local, max_choices=1) as server:
        completions = OpenAIGenerator(server.url, **FAST).complete(PROMPTS[:1], SAMPLED)
    seeds = [GenerationConfig(**{**SAMPLED.to_dict(), "n": 1, "seed": 5 + i}) for i in range(3)]
    assert completions[0] == [local.complete(PROMPTS[:1], config)[0][0] for config in seeds]
    assert [body["seed"] for _, body in server.state.requests] == [5, 6, 7]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_overload_and_server_errors_are_retried(local, status):
    with OpenAITestServer(local, failures=[status, status]) as server:
        completions = OpenAIGenerator(server.url, **FAST).complete(PROMPTS[:1], GREEDY)
    assert completions == one_by_one(local, PROMPTS[:1], GREEDY)
    assert len(server.state.requests) == 3


def test_a_client_error_fails_at_once_in_one_line(local):
    with OpenAITestServer(local, failures=[400]) as server:
        client = OpenAIGenerator(server.url, **FAST)
        with pytest.raises(ZenCoderError) as caught:
            client.complete(PROMPTS[:1], GREEDY)
    message = str(caught.value)
    assert f"{server.url}/completions answered HTTP 400: injected failure" in message
    assert "\n" not in message and len(server.state.requests) == 1


def test_errors_left_after_the_retries_name_the_url_and_status(local):
    expected = pytest.raises(ZenCoderError, match=r"/v1/completions answered HTTP 500")
    with OpenAITestServer(local, failures=[500] * 3) as server, expected:
        OpenAIGenerator(server.url, **FAST).complete(PROMPTS[:1], GREEDY)


def test_an_unreachable_server_is_a_quick_one_line_error():
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    started = time.monotonic()
    with pytest.raises(ZenCoderError) as caught:
        OpenAIGenerator(url, **FAST)
    message = str(caught.value)
    assert message.startswith(f"{url}/models did not answer") and "start the server" in message
    assert "\n" not in message and time.monotonic() - started < 5


def test_identity_records_what_the_server_says_of_the_model(server):
    identity = OpenAIGenerator(server.url, mode="chat", **FAST).identity()
    assert identity == {
        "backend": "openai",
        "base_url": server.url,
        "model": "tiny-coder",
        "mode": "chat",
        "served": {"id": "tiny-coder", "owned_by": "zen-coder-tests", "root": "tiny-coder-root"},
    }


def test_bad_arguments_are_one_line_errors(server):
    with pytest.raises(ZenCoderError, match="unknown mode 'edit'"):
        OpenAIGenerator(server.url, mode="edit")
    with pytest.raises(ZenCoderError, match="is not a server URL"):
        OpenAIGenerator("localhost:8000/v1")


def test_the_first_code_block_is_the_answer():
    assert first_code_block("Sure:\n```python\nx = 1\ny = 2\n```\nDone.\n```\nz\n```") == (
        "x = 1\ny = 2"
    )
    assert first_code_block("```\nx = 1\n    y") == "x = 1\n    y"  # cut by max_tokens
    assert first_code_block("    return a + b\n") == "    return a + b\n"  # no fence


def test_a_repeated_prompt_is_left_out():
    prompt = 'def add(a, b):\n    """Add."""\n'
    assert continuation_of(prompt + "    return a + b", prompt) == "    return a + b"
    # repeated without the prompt's trailing line break
    assert continuation_of(prompt.rstrip() + "\n    return a + b", prompt) == "    return a + b"
    assert continuation_of(prompt.rstrip() + "  # note", prompt) == "  # note"
    assert continuation_of("    return a + b", prompt) == "    return a + b"
    answer = f"Here:\n```python\n{prompt}    return a + b\n```"
    assert completion_from_chat(answer, prompt) == "    return a + b"
