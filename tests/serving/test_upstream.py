"""An OpenAI-compatible upstream behind zen-coder, as vLLM serves a large model: the upstream
stands in for vLLM (it refuses `suffix` as vLLM does, records what it receives, streams a fixed
answer, then waits until its client leaves). zen-coder builds the fill-in-the-middle prompt in
the model family's layout, cuts the streamed text by the editor's rules, closes the upstream
stream once it has cut, and passes chat through."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.serving.running import running
from zen_coder.serving.app import create_app
from zen_coder.serving.settings import ServerSettings
from zen_coder.serving.upstream import UpstreamBackend

# The upstream's answer: the body of `add`, then a new top-level function the editor must not
# get (a line indented less than the block at the cursor ends the completion).
ANSWER = ["return", " a + b\n", "\n", "def other", "():\n"]
CHAT_ANSWER = ["Hello", " there"]
WAIT = 30.0


def vllm_like() -> tuple[FastAPI, dict]:
    seen: dict = {"completions": [], "chat": [], "aborted": 0}
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "big-coder", "object": "model"}]}

    def stream(pieces: list[str], chunk) -> StreamingResponse:
        async def events():
            try:
                for piece in pieces:
                    yield f"data: {json.dumps(chunk(piece))}\n\n"
                await asyncio.Event().wait()  # hold on, as a model with more to say would
            finally:
                seen["aborted"] += 1  # reached only when the client closes the stream

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        seen["completions"].append(body)
        if "suffix" in body:
            return JSONResponse({"error": {"message": "suffix is not currently supported"}}, 400)
        if "OVERLOADED" in body["prompt"]:
            return JSONResponse({"error": {"message": "no capacity left"}}, 503)
        return stream(ANSWER, lambda text: {"choices": [{"index": 0, "text": text}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen["chat"].append(body)
        pieces = [*CHAT_ANSWER]

        async def events():
            for piece in pieces:
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(done)}\n\n"
            usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
            yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app, seen


@pytest.fixture(scope="module")
def upstream():
    app, seen = vllm_like()
    with running(app) as url:
        yield url, seen


@pytest.fixture(scope="module")
def client(upstream):
    url, _ = upstream
    backend = UpstreamBackend(f"{url}/v1", family="Qwen2.5-Coder")
    assert backend.model == "big-coder"  # the first model the upstream lists
    with running(create_app(backend, ServerSettings(model_name="zen-70b"))) as served:
        yield openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)


def test_fill_in_the_middle_reaches_the_upstream_as_a_prompt_in_the_familys_layout(
    client, upstream
):
    """Checked by hand: with `suffix` forwarded as it came, the upstream refused it (400) and
    zen-coder answered 502; with the cut-off off, "def other" came through."""
    _, seen = upstream
    answer = client.completions.create(
        model="zen-70b",
        prompt="def add(a, b):\n    ",
        suffix="\n\nprint(add(1, 2))\n",
        max_tokens=32,
        extra_body={"path": "calc/add.py"},
    )
    assert answer.choices[0].text == "return a + b"
    assert answer.choices[0].finish_reason == "stop"
    sent = seen["completions"][-1]
    assert "suffix" not in sent and sent["model"] == "big-coder"
    assert (
        "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n" in sent["prompt"]
    )
    assert sent["prompt"].endswith("<|fim_middle|>")
    assert "calc/add.py" in sent["prompt"]  # the file's path, in Qwen's repository layout
    deadline = time.monotonic() + WAIT
    while seen["aborted"] < 1:  # the upstream stream was closed once the text was cut
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_chat_passes_through(client, upstream):
    _, seen = upstream
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat.completions.create(model="zen-70b", messages=messages, max_tokens=5)
    assert answer.choices[0].message.content == "Hello there"
    assert answer.usage.prompt_tokens == 7
    assert seen["chat"][-1]["messages"] == messages


def test_an_upstream_failure_is_a_502_or_the_streams_last_event(client):
    with pytest.raises(openai.APIStatusError, match="no capacity left") as failure:
        client.completions.create(model="zen-70b", prompt="OVERLOADED", max_tokens=4)
    assert failure.value.status_code == 502
    with pytest.raises(openai.APIError, match="no capacity left"):
        list(client.completions.create(model="zen-70b", prompt="OVERLOADED", stream=True))
