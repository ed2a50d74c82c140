"""Tiny Hugging Face base models as a user downloads them, for the fine-tuning tests.

Random weights saved with transformers' `save_pretrained`, and a byte-level BPE tokenizer.json
whose family tokens (end of text, fill-in-the-middle) come after the learned vocabulary, as in
real bases, with fewer tokens than the embedding has rows: a padded vocabulary, as Qwen2.5-Coder
has (151,936 rows for about 151,665 tokens). The Qwen2 base is padded by 2 rows, fewer than the
markers `prepare --tokenizer` adds, so the data's vocabulary outgrows it; the Llama base by 64,
so it holds the data's vocabulary as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

import zen_coder

transformers = pytest.importorskip("transformers")


@dataclass(frozen=True)
class Base:
    prefix: str  # transformers' class prefix: Qwen2Config, Qwen2ForCausalLM
    tokens: tuple[str, ...]  # the family's special tokens, after the learned vocabulary
    padding: int  # embedding rows past the tokenizer
    tied: bool


BASES = {
    "qwen2": Base(
        "Qwen2",
        ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"),
        padding=2,
        tied=True,
    ),
    "llama": Base("Llama", ("<s>", "</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"), 64, tied=False),
}
LEARNED_TOKENS = 320
CONTEXT = 128  # the bases' max_position_embeddings, longer than the tests' sequences


def _source_text(limit: int = 50_000) -> list[str]:
    """Python text to learn merges from: zen-coder's own source."""
    texts, size = [], 0
    for path in sorted(Path(zen_coder.__file__).parent.rglob("*.py")):
        texts.append(path.read_text(encoding="utf-8"))
        size += len(texts[-1])
        if size >= limit:
            break
    return texts


def base_tokenizer(tokens: tuple[str, ...]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LEARNED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_source_text(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in tokens])
    return tokenizer


def hf_base(folder: Path, name: str, width: int = 64, seed: int = 0) -> Path:
    """Save the tiny base `name` of BASES, `width` wide, in `folder`: config.json,
    model.safetensors and tokenizer.json. Every weight is random, norms included (a swapped
    tensor shows)."""
    base = BASES[name]
    tokenizer = base_tokenizer(base.tokens)
    config = getattr(transformers, f"{base.prefix}Config")(
        vocab_size=tokenizer.get_vocab_size() + base.padding,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=base.tied,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{base.prefix}ForCausalLM")(config)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            parameter.normal_(1.0 if "norm" in parameter_name else 0.0, 0.1)
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
