"""Who may ask and how much: API keys (`Authorization: Bearer`), requests in flight per key,
bodies of bounded size, and the one error shape every refusal takes (one line, 4xx)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from typing import Any

from starlette.requests import Request

ANONYMOUS = "anonymous"


class ApiError(Exception):
    """A request the server refuses, answered as `{"error": {"message", "type", "code"}}`
    (OpenAI's shape, which every client here reads) with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, always
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "code": self.status}}


class Keys:
    """The API keys a server accepts; none means every request is let in. A key is known by a
    short hash of it in metrics and limits, never by itself."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = tuple(key.encode() for key in keys)

    def caller(self, request: Request) -> str:
        """The caller's key id, or ApiError 401 without a valid key."""
        if not self.keys:
            return ANONYMOUS
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        # compare_digest against every key: the time taken says nothing about which matched.
        matched = [hmac.compare_digest(given, key) for key in self.keys]
        if scheme.lower() != "bearer" or not any(matched):
            raise ApiError(
                401,
                "missing or wrong API key; send the header `Authorization: Bearer <key>`",
                {"WWW-Authenticate": "Bearer"},
            )
        return hashlib.sha256(given).hexdigest()[:12]


class InFlight:
    """Requests in flight per caller, at most `limit` each; one more gets 429 with
    Retry-After. The server is one event loop, so plain counting is safe."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit, self.retry_after = limit, retry_after
        self.counts: Counter[str] = Counter()

    def acquire(self, caller: str) -> None:
        if self.counts[caller] >= self.limit:
            raise ApiError(
                429,
                f"{self.limit} requests of this API key are already in flight; wait for one to "
                "finish (or raise --concurrent-per-key)",
                {"Retry-After": str(self.retry_after)},
            )
        self.counts[caller] += 1

    def release(self, caller: str) -> None:
        self.counts[caller] -= 1
        if not self.counts[caller]:
            del self.counts[caller]


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, read at most `limit` bytes far: 413 for a bigger body, 400 for
    one that is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; at most {limit} are accepted")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"the body has more than {limit} bytes; send less context")
    try:
        parsed = json.loads(raw)
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "the body must be a JSON object")
    return parsed
