"""What a server allows and where it listens, in one place: the CLI fills it, the app reads it."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def is_local_only(self) -> bool:
        return self.host in LOOPBACK_HOSTS
