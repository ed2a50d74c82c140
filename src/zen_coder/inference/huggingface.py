"""A Hugging Face causal language model (a folder or a Hub name) as a `Generator`.

Sampling is exactly what `GenerationConfig` says: the model's own `generation_config.json`
defaults that would change it (top-k, repetition penalty) are overridden, so a model is scored
the same way here as on the other backends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zen_coder.errors import ZenCoderError
from zen_coder.inference.generation import GenerationConfig, complete_in_batches, cut_at_stop
from zen_coder.inference.native import torch_dtype

# Files larger than this enter the fingerprint by their first FINGERPRINT_HEAD bytes only: a
# fingerprint of a 140 GB folder must take milliseconds, not minutes.
FINGERPRINT_WHOLE_UP_TO = 16 * 2**20
FINGERPRINT_HEAD = 2**20


class HuggingFaceGenerator:
    """`AutoModelForCausalLM.generate` over left-padded batches, stop strings included."""

    def __init__(self, folder_or_name: str, device: str = "cpu", dtype: str | None = None) -> None:
        transformers = _import_transformers()
        self.name = folder_or_name
        self.folder = Path(folder_or_name).resolve() if Path(folder_or_name).is_dir() else None
        source = str(self.folder or folder_or_name)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, padding_side="left")
            model = transformers.AutoModelForCausalLM.from_pretrained(
                source, **({"dtype": torch_dtype(dtype)} if dtype else {})
            )
        except (OSError, ValueError, TypeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ZenCoderError(
                f"cannot load the Hugging Face model {folder_or_name!r} ({reason}); pass a folder "
                "holding config.json or a Hub name such as Qwen/Qwen2.5-Coder-0.5B"
            ) from None
        self.model = model.to(device).eval()
        if self.tokenizer.pad_token is None:
            # Padding is masked out, so any token will do; the end of text is always there.
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def identity(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "backend": "huggingface",
            "model": str(self.folder or self.name),
            "name_or_path": config._name_or_path,
            "model_type": config.model_type,
            "commit_hash": getattr(config, "_commit_hash", None),
            "folder_fingerprint": folder_fingerprint(self.folder) if self.folder else None,
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }

    def complete(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        torch.manual_seed(config.seed)
        return complete_in_batches(prompts, config, lambda rows: self._complete_rows(rows, config))

    def _complete_rows(self, rows: list[str], config: GenerationConfig) -> list[str]:
        inputs = self.tokenizer(rows, return_tensors="pt", padding=True).to(self.model.device)
        stop = [sequence for sequence in config.stop if sequence]
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                **sampling_arguments(config),
                max_new_tokens=config.max_new_tokens,
                repetition_penalty=1.0,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=stop or None,
                tokenizer=self.tokenizer if stop else None,
            )
        new = output[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stop(text, stop) for text in texts]


def sampling_arguments(config: GenerationConfig) -> dict[str, Any]:
    """`generate`'s sampling settings: greedy, or temperature and top-p with top-k off (the other
    backends have no top-k, and a model's generation_config.json often sets one)."""
    if config.temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}


def folder_fingerprint(folder: Path) -> str:
    """sha256 over every top-level file of a model folder: name, size and content, where the
    content of a file over 16 MiB (a weights shard) is its first MiB. Cheap for any model, and
    still different for another checkpoint of the same shape: that MiB holds weights."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as file:
            digest.update(file.read(size if size <= FINGERPRINT_WHOLE_UP_TO else FINGERPRINT_HEAD))
    return digest.hexdigest()


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ZenCoderError(
            "the Hugging Face backend needs transformers; install it with "
            "`pip install 'transformers>=4.40'`"
        ) from None
    return transformers
