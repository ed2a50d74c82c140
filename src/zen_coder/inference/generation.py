"""The one interface every generation backend implements, so callers never know which one runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample. Stored with every result so that any number can be reproduced."""

    n: int = 1  # completions per prompt
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()  # a completion ends before the first of these
    seed: int = 0
    batch_size: int = 8  # prompts x samples per forward pass (local backends)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific, recorded verbatim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Generator(Protocol):
    """A model that continues text."""

    def identity(self) -> dict[str, Any]:
        """What model this is, precisely enough to reproduce a result: backend, path or URL,
        model name, and a content fingerprint or revision where the backend has one."""
        ...

    def complete(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        """`config.n` continuations of each prompt (the prompt itself excluded), each cut before
        the first stop sequence. Sampling is reproducible: the same prompts and config give the
        same completions."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop sequence."""
    end = len(text)
    for sequence in stop:
        if sequence:
            index = text.find(sequence)
            if 0 <= index < end:
                end = index
    return text[:end]


def distinct_samples(config: GenerationConfig) -> int:
    """How many completions per prompt must really be generated: greedy decoding would give `n`
    equal ones, so it generates one and repeats it."""
    return config.n if config.temperature > 0 else 1


def complete_in_batches(
    prompts: Sequence[str],
    config: GenerationConfig,
    complete_rows: Callable[[list[str]], list[str]],
) -> list[list[str]]:
    """`config.n` completions of each prompt, from `complete_rows` called on batches of at most
    `config.batch_size` rows, a row being a prompt repeated once per distinct sample.

    The local backends share it, so `batch_size` means the same in each: rows per forward pass.
    """
    samples = distinct_samples(config)
    rows = [prompt for prompt in prompts for _ in range(samples)]
    size = max(1, config.batch_size)
    texts: list[str] = []
    for start in range(0, len(rows), size):
        texts += complete_rows(rows[start : start + size])
    return [
        [texts[index * samples + sample % samples] for sample in range(config.n)]
        for index in range(len(prompts))
    ]
