"""Tiny base-model tokenizers in the shapes of real families, built with `tokenizers`, each with
the settings files its family publishes beside tokenizer.json.

    qwen       byte-level BPE in Qwen2's pipeline (NFC, its split pattern); <|endoftext|> is EOS
               and pad; <|fim_prefix|>... <|repo_name|> <|file_sep|> are added special tokens
    starcoder  byte-level BPE, a lone tokenizer.json (no settings): <|endoftext|>, <fim_prefix>...
               <repo_name> <file_sep> <commit_before> <commit_msg> <commit_after>
    codellama  SentencePiece-style BPE (Metaspace, byte fallback) with <s> added by its
               post-processor and add_bos_token, </s> EOS, no pad, and CodeLlama's ▁<PRE> ▁<SUF>
               ▁<MID> ▁<EOT> as ordinary (not special) added tokens
    plain      byte-level BPE without any marker; its EOS <eos> is named only by config.json's
               eos_token_id, as some model folders do
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

TEXTS = [
    "def area(radius: float) -> float:\n    return 3.14159 * radius**2\n",
    "class Box:\n    def __init__(self):\n        self.items = []\n",
    "import os\n\nfor name in os.listdir('.'):\n    print(name)\n",
    "Fix the parser when a line ends with a comment\n",
] * 20
# transformers' Qwen2Tokenizer rebuilds the pipeline with this pattern; a base that used another
# one would not read back in transformers with the same ids, whatever zen-coder did.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
STARCODER_SPECIAL = [
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<repo_name>",
    "<file_sep>",
    "<issue_start>",
    "<commit_before>",
    "<commit_msg>",
    "<commit_after>",
]
CODELLAMA_MARKERS = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]


@dataclass(frozen=True)
class Base:
    path: Path  # what `--tokenizer` is given: the folder, or the lone tokenizer.json
    size: int  # its vocabulary, added tokens included
    eos: str
    bos: str | None
    roles: dict[str, str]  # the roles it has a token for: role -> the token


def _byte_level(special: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in special])
    return tokenizer


def _added_tokens_decoder(tokenizer: Tokenizer) -> dict[str, dict]:
    return {
        str(id_): {
            "content": token.content,
            "lstrip": False,
            "normalized": token.normalized,
            "rstrip": False,
            "single_word": False,
            "special": token.special,
        }
        for id_, token in tokenizer.get_added_tokens_decoder().items()
    }


def _write(folder: Path, tokenizer: Tokenizer, config: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    if config is not None:
        config["added_tokens_decoder"] = _added_tokens_decoder(tokenizer)
        (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return folder


def qwen(folder: Path, eos: str = "<|endoftext|>") -> Base:
    """Qwen2.5-Coder's shape; `eos="<|im_end|>"` gives its instruct model's settings."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in QWEN_SPECIAL])
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": QWEN_SPECIAL[1:],
        "chat_template": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
    }
    roles = {
        "<|endoftext|>": eos,
        "<|repo|>": "<|repo_name|>",
        "<|path|>": "<|file_sep|>",
        "<|fim_prefix|>": "<|fim_prefix|>",
        "<|fim_suffix|>": "<|fim_suffix|>",
        "<|fim_middle|>": "<|fim_middle|>",
    }
    return Base(_write(folder, tokenizer, config), tokenizer.get_vocab_size(), eos, None, roles)


def starcoder(folder: Path) -> Base:
    """StarCoder2's markers, given as a lone tokenizer.json."""
    tokenizer = _byte_level(STARCODER_SPECIAL)
    file = _write(folder, tokenizer, None) / "tokenizer.json"
    roles = {
        "<|endoftext|>": "<|endoftext|>",
        "<|repo|>": "<repo_name>",
        "<|path|>": "<file_sep>",
        "<|fim_prefix|>": "<fim_prefix>",
        "<|fim_suffix|>": "<fim_suffix>",
        "<|fim_middle|>": "<fim_middle>",
        "<|before|>": "<commit_before>",
        "<|message|>": "<commit_msg>",
        "<|after|>": "<commit_after>",
    }
    return Base(file, tokenizer.get_vocab_size(), "<|endoftext|>", None, roles)


def codellama(folder: Path) -> Base:
    """CodeLlama's shape: Llama's SentencePiece BPE as transformers' LlamaTokenizer builds it."""
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False)
    pieces = Tokenizer(models.BPE())
    pieces.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    pieces.train_from_iterator(TEXTS, trainer)
    model = json.loads(pieces.to_str())["model"]
    # Llama's vocabulary: <unk> <s> </s>, the 256 byte tokens of byte fallback, then the pieces.
    vocab = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    vocab += sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(merge) for merge in model["merges"]]
    tokenizer = Tokenizer(
        models.BPE(
            {piece: id_ for id_, piece in enumerate(vocab)},
            merges,
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in ("<unk>", "<s>", "</s>")]
    )
    tokenizer.add_tokens([AddedToken(token, normalized=False) for token in CODELLAMA_MARKERS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 16384,
    }
    roles = {
        "<|endoftext|>": "</s>",
        "<|fim_prefix|>": "▁<PRE>",
        "<|fim_suffix|>": "▁<SUF>",
        "<|fim_middle|>": "▁<MID>",
    }
    return Base(_write(folder, tokenizer, config), tokenizer.get_vocab_size(), "</s>", "<s>", roles)


def plain(folder: Path) -> Base:
    """No markers at all; the EOS is named only by the model's config.json."""
    tokenizer = _byte_level(["<eos>", "<unused>"])
    _write(folder, tokenizer, None)
    eos_id = tokenizer.token_to_id("<eos>")
    (folder / "config.json").write_text(json.dumps({"model_type": "x", "eos_token_id": [eos_id]}))
    roles = {"<|endoftext|>": "<eos>"}
    return Base(folder, tokenizer.get_vocab_size(), "<eos>", None, roles)
