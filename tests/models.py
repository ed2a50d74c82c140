"""Tiny real models for the generation backends, built once per session: a byte-level BPE
tokenizer trained on the standard library, a native zen-coder model folder saved the way a run
saves it (with the prepared data's language table), and a Hugging Face Llama saved with
`save_pretrained`, both with that tokenizer."""

from __future__ import annotations

import dataclasses
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from zen_coder.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from zen_coder.history.languages import LANGUAGES
from zen_coder.model.config import preset
from zen_coder.model.folder import TOKENIZER_FILES, save_model
from zen_coder.model.model import ZenCoder

# The table `prepare` writes: the mining stage's list, after the unknown language.
LANGUAGE_TABLE = ["<unknown>", *LANGUAGES]


# The repository table of a model with n_repos 1: the unknown repository's row only.
NO_REPOSITORIES = ["<unknown>"]


def _python_source(limit: int) -> list[str]:
    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        texts.append(path.read_text(encoding="utf-8", errors="replace")[: limit - size])
        size += len(texts[-1])
        if size >= limit:
            break
    return texts


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(_python_source(30_000), 400), folder, context_length=256)
    return folder


def _with_tokenizer(folder: Path, tokenizer_folder: Path) -> Path:
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_folder / name, folder / name)
    return folder


def native_config(tokenizer: Path):
    """The tests' small native model, with the vocabulary of the tokenizer in folder `tokenizer`."""
    return dataclasses.replace(
        preset("tiny").with_techniques(),
        vocab_size=load_tokenizer(tokenizer).get_vocab_size(),
        context_length=256,
        d_model=64,
        n_layers=2,
        n_experts=4,
        experts_per_token=2,
        expert_dim=32,
    )


@pytest.fixture(scope="session")
def native_folder(tmp_path_factory, tokenizer_folder) -> Path:
    config = native_config(tokenizer_folder)
    torch.manual_seed(0)
    model = ZenCoder(config)
    with torch.no_grad():  # language routing starts as a no-op; make the language matter
        for block in model.blocks:
            block.moe.language.normal_(std=2.0)
    folder = tmp_path_factory.mktemp("native") / "model"
    save_model(
        folder, config, model.state_dict(), LANGUAGE_TABLE, tokenizer_folder, repos=NO_REPOSITORIES
    )
    return folder


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, tokenizer_folder) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("hf") / "model", tokenizer_folder, positions=256)


def tiny_llama(folder: Path, tokenizer_folder: Path, positions: int) -> Path:
    """A tiny Llama with the tests' tokenizer saved in `folder`, `positions` long."""
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer(tokenizer_folder)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        pad_token_id=tokenizer.token_to_id("<|pad|>"),
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return _with_tokenizer(folder, tokenizer_folder)
