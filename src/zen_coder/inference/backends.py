"""One entry point from a model argument (a folder, a Hub name or a server URL) to a `Generator`,
so that every command takes the same `--model` and picks the backend from it."""

from __future__ import annotations

import re
from pathlib import Path

from zen_coder.errors import ZenCoderError
from zen_coder.inference.generation import Generator
from zen_coder.inference.huggingface import HuggingFaceGenerator
from zen_coder.inference.native import NativeGenerator
from zen_coder.inference.remote import OpenAIGenerator
from zen_coder.model.folder import CONFIG_FILE, is_model_folder

BACKENDS = ("native", "huggingface", "openai")
HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


def detect_backend(model: str) -> str:
    """The backend `model` needs: a server URL is `openai`, a folder with a zen-coder config is
    `native`, one with a Hugging Face config.json or a name like owner/name is `huggingface`."""
    if model.startswith(("http://", "https://")):
        return "openai"
    path = Path(model).expanduser()
    if path.is_dir():
        if is_model_folder(path):
            return "native"
        if (path / "config.json").is_file():
            return "huggingface"
        raise ZenCoderError(
            f"{model} holds neither {CONFIG_FILE} (a zen-coder model) nor config.json (a Hugging "
            "Face model); pass a run's model/ or hf/ folder"
        )
    if path.exists():
        raise ZenCoderError(f"{model} is a file, not a model folder; pass the folder that holds it")
    if HUB_NAME.fullmatch(model):
        return "huggingface"
    raise ZenCoderError(
        f"model {model!r} not found: pass a model folder, a Hugging Face Hub name (owner/name) or "
        "a server URL (http://host:8000/v1)"
    )


def open_generator(
    model: str,
    *,
    backend: str | None = None,
    mode: str = "completions",
    device: str = "cpu",
    dtype: str | None = None,
    api_key: str | None = None,
    served_model: str | None = None,
) -> Generator:
    """The generator for `model`; `backend` None detects it. `mode`, `api_key` and
    `served_model` (the server's name for the model) concern servers, `device` and `dtype`
    local models."""
    backend = backend or detect_backend(model)
    if backend == "openai":
        return OpenAIGenerator(model, model=served_model, mode=mode, api_key=api_key)
    if backend == "native":
        return NativeGenerator(model, device=device, dtype=dtype)
    if backend == "huggingface":
        return HuggingFaceGenerator(model, device=device, dtype=dtype)
    raise ZenCoderError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
