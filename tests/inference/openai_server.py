"""A small OpenAI-compatible HTTP server in front of a local `Generator`, for testing clients.

It serves GET /v1/models, POST /v1/completions and POST /v1/chat/completions on 127.0.0.1 and
a free port. Its chat model answers the way instruction-tuned models do: some prose, then a
fenced block that repeats the prompt (taken from the user message's fence) and completes it.
Switches imitate real servers' habits: `failures` answers the next requests with these HTTP
statuses, `max_choices` ignores larger `n` (llama.cpp), `delay` makes requests overlap.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from zen_coder.inference.generation import GenerationConfig, Generator

USER_CODE = re.compile(r"```\n(.*)\n```", re.DOTALL)


@dataclass
class ServerState:
    generator: Generator
    model_id: str
    failures: list[int] = field(default_factory=list)
    max_choices: int | None = None
    delay: float = 0.0
    requests: list[tuple[str, dict]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    model_lock: threading.Lock = field(default_factory=threading.Lock)


class OpenAITestServer:
    """`with OpenAITestServer(generator) as server:` serves at `server.url` (ends in /v1)."""

    def __init__(self, generator: Generator, model_id: str = "tiny-coder", **switches) -> None:
        self.state = ServerState(generator, model_id, **switches)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> OpenAITestServer:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: ServerState = self.server.state
        if self.path != "/v1/models":
            return self.answer(404, {"error": {"message": f"no route {self.path}"}})
        entry = {
            "id": state.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "zen-coder-tests",
            "root": "tiny-coder-root",
        }
        return self.answer(200, {"object": "list", "data": [entry]})

    def do_POST(self) -> None:
        state: ServerState = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state.lock:
            state.requests.append((self.path, body))
            failure = state.failures.pop(0) if state.failures else None
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            time.sleep(state.delay)
            if failure is not None:
                return self.answer(failure, {"error": {"message": "injected failure"}})
            if self.path == "/v1/completions":
                texts = self.complete(state, body["prompt"], body)
                choices = [{"index": i, "text": text} for i, text in enumerate(texts)]
            elif self.path == "/v1/chat/completions":
                prompt = USER_CODE.search(body["messages"][-1]["content"]).group(1)
                texts = self.complete(state, prompt, body)
                answers = [chat_answer(prompt, text) for text in texts]
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": answer}}
                    for i, answer in enumerate(answers)
                ]
            else:
                return self.answer(404, {"error": {"message": f"no route {self.path}"}})
            return self.answer(200, {"object": "text_completion", "choices": choices})
        finally:
            with state.lock:
                state.in_flight -= 1

    @staticmethod
    def complete(state: ServerState, prompt: str, body: dict[str, Any]) -> list[str]:
        n = min(body.get("n", 1), state.max_choices or body.get("n", 1))
        config = GenerationConfig(
            n=n,
            temperature=body.get("temperature", 1.0),
            top_p=body.get("top_p", 1.0),
            max_new_tokens=body.get("max_tokens", 16),
            stop=tuple(body.get("stop") or ()),
            seed=body.get("seed", 0),
        )
        with state.model_lock:  # one generation at a time: seeded sampling stays reproducible
            return state.generator.complete([prompt], config)[0]

    def answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `ServerState.requests` instead."""


def chat_answer(prompt: str, completion: str) -> str:
    """An instruction-tuned model's habit: prose around a block that repeats the prompt."""
    return f"Here is the completed code:\n\n```python\n{prompt}{completion}\n```\n\nIt works."
