"""What a server allows and where it listens, in one place: the CLI fills it, the app reads it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from zen_coder.errors import ZenCoderError

KEYS_VARIABLE = "ZEN_CODER_API_KEYS"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerSettings:
    """Limits default to what an editor needs (Tabby: 1,536 prompt tokens, 64 new ones) with
    room to spare; a team raises them for chat or long completions."""

    host: str = "127.0.0.1"  # localhost unless told otherwise: a model is a resource to guard
    port: int = 8000
    model_name: str = "zen-coder"  # the id /v1/models lists and responses name
    api_keys: tuple[str, ...] = ()  # empty: no key needed (fine on localhost only)
    max_prompt_tokens: int = 4096  # the prompt as the model reads it, context included
    max_tokens: int = 1024  # per completion; larger requests get a 400
    default_max_tokens: int = 64  # when a request names none (Tabby never does)
    max_n: int = 4  # completions per request
    max_stop: int = 16  # stop sequences per request
    max_body_bytes: int = 2**20  # 1 MiB: a file and its context, never a repository
    concurrent_per_key: int = 8  # requests in flight per API key; the next gets 429
    context_tokens: int = 1536  # the prompt budget of fill-in-the-middle with repository context
    prefix_share: float = 0.5  # of context_tokens, for the text before the cursor
    suffix_share: float = 0.2  # for the text after it; the rest goes to repository context
    retry_after_seconds: int = 1
    request_seconds: float | None = None  # a completion running longer ends with what it has

    def __post_init__(self) -> None:
        counts = {
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_tokens": self.max_tokens,
            "max_n": self.max_n,
            "concurrent_per_key": self.concurrent_per_key,
            "context_tokens": self.context_tokens,
        }
        for name, value in counts.items():
            if value < 1:
                raise ZenCoderError(f"{name} is {value}; it must be at least 1")
        if self.request_seconds is not None and self.request_seconds <= 0:
            raise ZenCoderError(
                f"the request time limit is {self.request_seconds}; give seconds > 0"
            )
        shares = (self.prefix_share, self.suffix_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ZenCoderError(
                f"prefix share {self.prefix_share} and suffix share {self.suffix_share} must be "
                "0 or more and add up to at most 1 (the rest goes to repository context)"
            )

    @property
    def is_local_only(self) -> bool:
        return self.host in LOOPBACK_HOSTS


def keys_from_environment() -> tuple[str, ...]:
    """API keys from ZEN_CODER_API_KEYS (comma-separated): keys kept out of the command line,
    where other users of the machine could read them."""
    return tuple(key.strip() for key in os.environ.get(KEYS_VARIABLE, "").split(",") if key.strip())
