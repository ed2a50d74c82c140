"""A native zen-coder model folder (a run's `model/`) as a `Generator`.

Prompts of different lengths share a batch, left-padded: the padding is segment 0 of the
model's document masking, so each row computes exactly what it would alone.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from zen_coder.data.tokenizer import read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.channels import ChannelTables
from zen_coder.inference.generation import GenerationConfig, complete_in_batches, cut_at_stop
from zen_coder.inference.slots import Channels
from zen_coder.model.folder import WEIGHTS_FILE, load_model

# What tells two zen-coder models apart in a result: the fields the presets set, and the switches.
IDENTITY_FIELDS = (
    "vocab_size",
    "context_length",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "n_experts",
    "experts_per_token",
    "expert_dim",
    "rope_scaling",
    "rope_factor",
    "repo_embeddings",
    "temporal_attention",
    "language_routing",
    "contrastive_loss",
)
# Decoding every row's text after every token would cost more than a small model's step.
STOP_CHECK_EVERY = 8
DTYPES = ("float32", "bfloat16", "float16")


class NativeGenerator:
    """Greedy or nucleus sampling from a zen-coder model with `ZenCoder.generate`.

    Special tokens spelled out in a prompt ("<|repo|>", "<|after|>", ...) are encoded as those
    tokens, as `prepare` inserts them by id, so prompts in the training format work; a model
    fine-tuned from a base spells its roles with the base's tokens (`RoleTokenizer.role_tokens`).
    Every prompt starts with the tokenizer's BOS where `prepare` started every sample with it.
    Completions end at the model's EOS and show any other special token as its text, where a
    caller can cut.

    The history channels are filled by the ids the model was trained with (the folder's tables,
    `channels.ChannelTables`): `config.extra["repo"]`, a repository name as `zen-coder mine`
    gave it, sets the repository embedding; `config.extra["language"]`, a language name such as
    "Python" (any case), sets the language routing. Without one, or for a name the model does
    not know, that channel is 0, the unknown id the model was trained with too (repository
    dropout, files of no known language). Every token gets one time, `channels.PROMPT_TIME`:
    the temporal bias depends only on differences of times within a prompt, so one time for a
    whole prompt changes nothing, whatever its value (a prompt has no per-token times here).
    """

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.device = torch.device(device)
        self.model = load_model(self.folder).to(device=self.device, dtype=torch_dtype(dtype))
        self.tables = ChannelTables.of_folder(self.folder)  # the ids it learned
        roles = read_tokenizer(self.folder)  # the prepared data's, which the model learned
        self.tokenizer = roles.tokenizer
        # Prompts spell special tokens as text ("<|repo|>...<|after|>") where `prepare` put ids.
        self.tokenizer.encode_special_tokens = False
        self.eos_id, self.pad_id, self.bos_id = roles.eos_id, roles.pad_id, roles.bos_id

    def identity(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "backend": "native",
            "path": str(self.folder),
            "weights_sha256": self._weights_sha256,
            "tokenizer_sha256": file_sha256(self.folder / "tokenizer.json"),
            "dtype": str(self.model.embed.weight.dtype).removeprefix("torch."),
            "config": {name: getattr(config, name) for name in IDENTITY_FIELDS},
        }

    def language_id(self, name: str | None) -> int:
        """The id the model was trained with for the language `name` (any case); 0 = unknown."""
        return self.tables.channels(None, name).language

    def channels(self, config: GenerationConfig) -> Channels:
        """The repository, language and time ids of `config.extra`'s names."""
        return self.tables.channels(config.extra.get("repo"), config.extra.get("language"))

    @functools.cached_property
    def _weights_sha256(self) -> str:
        return file_sha256(self.folder / WEIGHTS_FILE)

    def complete(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        generator = torch.Generator(self.device).manual_seed(config.seed)
        channels = self.channels(config)
        return complete_in_batches(
            prompts, config, lambda rows: self._complete_rows(rows, config, generator, channels)
        )

    def _complete_rows(
        self,
        rows: list[str],
        config: GenerationConfig,
        generator: torch.Generator,
        channels: Channels,
    ) -> list[str]:
        encodings = self.tokenizer.encode_batch(rows, add_special_tokens=False)
        start = [] if self.bos_id is None else [self.bos_id]
        encoded = [start + encoding.ids for encoding in encodings]
        if not all(encoded):
            raise ZenCoderError("a prompt is empty; a native model needs at least one token")
        width = max(len(ids) for ids in encoded)
        tokens = [[self.pad_id] * (width - len(ids)) + ids for ids in encoded]
        segment = [[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded]
        tokens_tensor = torch.tensor(tokens, device=self.device)
        output = self.model.generate(
            tokens_tensor,
            config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            eos_id=self.eos_id,
            repo=torch.full_like(tokens_tensor, channels.repo),
            language=torch.full_like(tokens_tensor, channels.language),
            time=torch.full_like(tokens_tensor, channels.time),
            segment=torch.tensor(segment, device=self.device),
            finished=stop_detector(self.tokenizer, config.stop) if config.stop else None,
            generator=generator,
        )
        return [cut_at_stop(self._decode(ids), config.stop) for ids in output[:, width:].tolist()]

    def _decode(self, ids: list[int]) -> str:
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def stop_detector(tokenizer: Tokenizer, stop: Sequence[str]) -> Callable[[Tensor], Tensor]:
    """`ZenCoder.generate`'s `finished`: the rows whose text so far holds a stop sequence, looked
    for every STOP_CHECK_EVERY tokens (a row found late is cut at the same place)."""

    def finished(generated: Tensor) -> Tensor:
        rows = generated.shape[0]
        if generated.shape[1] % STOP_CHECK_EVERY:
            return torch.zeros(rows, dtype=torch.bool, device=generated.device)
        texts = tokenizer.decode_batch(generated.tolist(), skip_special_tokens=False)
        seen = [any(sequence and sequence in text for sequence in stop) for text in texts]
        return torch.tensor(seen, dtype=torch.bool, device=generated.device)

    return finished


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype named `name`; None keeps the weights' own."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ZenCoderError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
