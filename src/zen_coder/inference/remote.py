"""Any OpenAI-compatible HTTP server (vLLM, llama.cpp, TGI, OpenAI itself) as a `Generator`.

Two modes: `completions` continues the prompt as it is (base models, and every server that
offers /completions); `chat` asks an instruction-tuned model to complete the code and takes the
continuation out of its answer. Only the standard library: the backend adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from zen_coder.errors import ZenCoderError
from zen_coder.inference.generation import GenerationConfig, cut_at_stop, distinct_samples

MODES = ("completions", "chat")
MAX_STOP_SEQUENCES = 4  # the OpenAI API refuses more; all of them are cut here anyway
CHAT_INSTRUCTION = (
    "Complete the following code. Answer with the complete code in one fenced code block."
)
# Fields of a /models entry that change whenever the server restarts: kept out of the identity.
VOLATILE_MODEL_FIELDS = ("object", "created", "permission")
# The line break before the closing fence ends the last line of code; it is not part of it.
FENCED_BLOCK = re.compile(r"```[^\n]*\n(.*?)(?:\n?```|\Z)", re.DOTALL)
HTTP_FIXES = {
    400: "check the model name and the sampling settings the server accepts",
    401: "set OPENAI_API_KEY or pass the server's API key",
    403: "set OPENAI_API_KEY or pass the server's API key",
    404: "check the URL (it usually ends in /v1), the mode (completions or chat) and the model",
}


class OpenAIGenerator:
    """Completions from an OpenAI-compatible server, one request per prompt, `concurrency` at a
    time; connection errors, 429 and 5xx answers are retried with exponential backoff.

    `model` None takes the first model the server lists. Servers that return fewer choices than
    the `n` asked for (some ignore `n`) are asked again, the seed advanced, until `n` are in.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        mode: str = "completions",
        api_key: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 8,
        retries: int = 5,
        backoff: float = 1.0,
    ) -> None:
        if mode not in MODES:
            raise ZenCoderError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not base_url.startswith(("http://", "https://")):
            raise ZenCoderError(
                f"{base_url!r} is not a server URL; pass one like http://host:8000/v1"
            )
        self.base_url = base_url.rstrip("/")
        self.mode = mode
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, concurrency)
        listed = self._request("/models").get("data") or []
        if model is None and not listed:
            raise ZenCoderError(f"{self.base_url}/models lists no model; name the model to use")
        self.model = model or listed[0]["id"]
        self.served = next((entry for entry in listed if entry.get("id") == self.model), {})

    def identity(self) -> dict[str, Any]:
        served = {k: v for k, v in self.served.items() if k not in VOLATILE_MODEL_FIELDS}
        return {
            "backend": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "mode": self.mode,
            "served": served,
        }

    def complete(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda prompt: self._complete_one(prompt, config), prompts))

    def _complete_one(self, prompt: str, config: GenerationConfig) -> list[str]:
        wanted = distinct_samples(config)
        texts: list[str] = []
        while len(texts) < wanted:
            body = self._body(prompt, config, n=wanted - len(texts), seed=config.seed + len(texts))
            texts += [self._text(choice, prompt) for choice in self._choices(body)]
        return [cut_at_stop(texts[sample % wanted], config.stop) for sample in range(config.n)]

    def _body(self, prompt: str, config: GenerationConfig, n: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_new_tokens,
            "seed": seed,
        }
        if self.mode == "chat":
            # Stop sequences are meant for the code, not for the answer around it: cut later.
            body["messages"] = [{"role": "user", "content": chat_message(prompt)}]
        else:
            body["prompt"] = prompt
            stop = [sequence for sequence in config.stop if sequence][:MAX_STOP_SEQUENCES]
            if stop:
                body["stop"] = stop
        return body

    def _choices(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        path = "/chat/completions" if self.mode == "chat" else "/completions"
        choices = self._request(path, body).get("choices")
        if not choices or not isinstance(choices, list):
            raise ZenCoderError(
                f"{self.base_url}{path} answered without choices; check that the server is "
                "OpenAI-compatible and serves this mode"
            )
        return sorted(choices, key=lambda choice: choice.get("index", 0))

    def _text(self, choice: dict[str, Any], prompt: str) -> str:
        if self.mode == "chat":
            return completion_from_chat((choice.get("message") or {}).get("content") or "", prompt)
        return choice.get("text") or ""

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET (no body) or POST `path`, retried; any failure left is one ZenCoderError line."""
        url = self.base_url + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return parse_json(response.read(), url)
            except urllib.error.HTTPError as error:
                retryable = error.code == 429 or error.code >= 500
                if attempt == self.retries or not retryable:
                    raise ZenCoderError(http_error_message(url, error.code, error.read())) from None
            except (OSError, http.client.HTTPException) as error:
                if attempt == self.retries:
                    raise ZenCoderError(
                        f"{url} did not answer ({connection_reason(error)}) after {attempt + 1} "
                        "tries; start the server, fix the URL (like http://localhost:8000/v1) or "
                        "raise the timeout"
                    ) from None
            time.sleep(self.backoff * 2**attempt)
            attempt += 1


def chat_message(prompt: str) -> str:
    """The user message of chat mode: the instruction, then the prompt fenced, so that the model
    sees where the code starts and ends."""
    return f"{CHAT_INSTRUCTION}\n\n```\n{prompt}\n```"


def first_code_block(answer: str) -> str:
    """The code of the answer's first fenced block, to the end of the answer when the fence is
    never closed (max_tokens cut it); the whole answer when it has no fence."""
    match = FENCED_BLOCK.search(answer)
    return match.group(1) if match else answer


def continuation_of(code: str, prompt: str) -> str:
    """What `code` adds to `prompt`. Chat models often repeat the prompt first, mostly without
    its trailing whitespace; code that does not start with the prompt is all continuation."""
    stripped = prompt.rstrip()
    if not stripped or not code.startswith(stripped):
        return code
    rest, trailing = code[len(stripped) :], prompt[len(stripped) :]
    return rest[len(trailing) :] if rest.startswith(trailing) else rest


def completion_from_chat(answer: str, prompt: str) -> str:
    """The continuation of `prompt` in a chat answer: its first code block, less the prompt."""
    return continuation_of(first_code_block(answer), prompt)


def parse_json(raw: bytes, url: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ZenCoderError(f"{url} answered something other than a JSON object: {short(raw)}")
    return parsed


def http_error_message(url: str, status: int, raw: bytes) -> str:
    """One line: where, what status, what the server said, and what to do about it."""
    fix = HTTP_FIXES.get(status, "see the server's log; lower the concurrency or try later")
    return f"{url} answered HTTP {status}: {server_message(raw)}; {fix}"


def server_message(raw: bytes) -> str:
    """The error message of an OpenAI-style error body, else the body itself, shortened."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return short(raw)
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return short(str(error).encode())


def connection_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return short(str(reason).encode()) or type(error).__name__


def short(raw: bytes, limit: int = 200) -> str:
    """`raw` as one line of at most `limit` characters."""
    text = " ".join(raw.decode(errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
