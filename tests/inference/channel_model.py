"""A tiny native model whose completions depend on its history channels, saved as a run saves
it: three repositories in its table, language routing rows and repository embeddings large
enough that a repository or a language id changes the greedy text. So a test can tell from the
text alone which ids reached the model, with no spy on the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from tests.models import LANGUAGE_TABLE, native_config
from zen_coder.model.folder import save_model
from zen_coder.model.model import ZenCoder

REPOS = ["<unknown>", "github.com/acme/tools", "github.com/acme/web"]


def channel_model_folder(
    folder: Path, tokenizer_folder: Path, repos: Sequence[str] = REPOS
) -> Path:
    """The model in `folder`, with the tokenizer of `tokenizer_folder` and the repository
    table `repos` (`"<unknown>"` first)."""
    config = dataclasses.replace(native_config(tokenizer_folder), n_repos=len(repos))
    torch.manual_seed(1)
    model = ZenCoder(config)
    with torch.no_grad():
        # As large as the token embeddings; row 0, the unknown repository, stays zero.
        model.repo.weight[1:].normal_(std=float(model.embed.weight.std()))
        for block in model.blocks:
            block.moe.language.normal_(std=2.0)
    save_model(folder, config, model.state_dict(), LANGUAGE_TABLE, tokenizer_folder, repos=repos)
    return folder
