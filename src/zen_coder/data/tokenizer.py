"""The tokenizer of the `prepare` stage: byte-level BPE trained on the mined code and messages,
or a base model's own tokenizer for fine-tuning.

Byte-level BPE with no normalizer maps any text to tokens and back exactly: every byte has a
token, and nothing is rewritten on the way in, so code, NFD file names and stray control
characters survive. The special tokens (SPECIAL_TOKENS, ids 0..15) frame the training examples;
training code inserts them by id, and the tokenizers here encode their strings as ordinary text,
so a file that contains "<|endoftext|>" cannot inject a control token.

The names of SPECIAL_TOKENS are roles. In a tokenizer `prepare` trains, each role is the token of
that name. In a base model's tokenizer, a role is the base's own token where it has one (its EOS,
its pad, its fill-in-the-middle and file markers: BASE_FAMILY_TOKENS), so a fine-tuned model keeps
the format the base was trained on and that editors send; only the roles it lacks get a token of
their own, added after its vocabulary. `read_tokenizer` finds the role tokens of any tokenizer the
same way, so `prepare`, training and inference agree on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from zen_coder.errors import ZenCoderError
from zen_coder.files import read_json, write_bytes_atomic, write_json_atomic

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|pad|>",
    "<|repo|>",
    "<|path|>",
    "<|lang|>",
    "<|message|>",
    "<|before|>",
    "<|after|>",
    "<|diff|>",
    "<|history|>",
    "<|change|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|instruction|>",
    "<|response|>",
)
EOS = "<|endoftext|>"  # the role that ends every document
PAD = "<|pad|>"  # the role that fills the end of the last sequence and left-pads prompts

# The tokens that play zen-coder's roles in the tokenizers of base models, by family. A role is
# the base's token only where the base has it as a token of its own (an added token, or, for
# CodeLlama's SentencePiece markers, one vocabulary entry); found by id, never by encoding text.
# The EOS role is the base's EOS as its tokenizer_config.json names it; these entries serve only
# a lone tokenizer.json, which does not say.
_STARCODER2 = {
    EOS: "<|endoftext|>",
    "<|repo|>": "<repo_name>",
    "<|path|>": "<file_sep>",
    "<|fim_prefix|>": "<fim_prefix>",
    "<|fim_suffix|>": "<fim_suffix>",
    "<|fim_middle|>": "<fim_middle>",
    "<|before|>": "<commit_before>",
    "<|message|>": "<commit_msg>",
    "<|after|>": "<commit_after>",
}
BASE_FAMILY_TOKENS: dict[str, dict[str, str]] = {
    "Qwen2.5-Coder, Qwen3-Coder": {
        EOS: "<|endoftext|>",
        "<|repo|>": "<|repo_name|>",
        "<|path|>": "<|file_sep|>",
        "<|fim_prefix|>": "<|fim_prefix|>",
        "<|fim_suffix|>": "<|fim_suffix|>",
        "<|fim_middle|>": "<|fim_middle|>",
    },
    "StarCoder2": _STARCODER2,
    # StarCoder (1) named the repository and file markers differently.
    "StarCoder, StarCoderBase": _STARCODER2 | {"<|repo|>": "<reponame>", "<|path|>": "<filename>"},
    # DeepSeek-Coder's "hole" marks where the middle was cut out: the suffix follows it. Its
    # tokens are spelled with U+FF5C (a fullwidth bar) and U+2581 (a low block), not "|" and "_".
    "DeepSeek-Coder": {
        EOS: "<｜end▁of▁sentence｜>",  # noqa: RUF001
        "<|fim_prefix|>": "<｜fim▁begin｜>",  # noqa: RUF001
        "<|fim_suffix|>": "<｜fim▁hole｜>",  # noqa: RUF001
        "<|fim_middle|>": "<｜fim▁end｜>",  # noqa: RUF001
    },
    "CodeLlama": {
        EOS: "</s>",
        "<|fim_prefix|>": "▁<PRE>",
        "<|fim_suffix|>": "▁<SUF>",
        "<|fim_middle|>": "▁<MID>",
    },
    "Codestral": {
        EOS: "</s>",
        "<|fim_prefix|>": "[PREFIX]",
        "<|fim_suffix|>": "[SUFFIX]",
        "<|fim_middle|>": "[MIDDLE]",
    },
    "Llama 3": {EOS: "<|end_of_text|>"},
}
# Each role's candidate tokens in the order tried: its own name first (a tokenizer `prepare`
# trained, or one it extended), then the families' tokens.
_CANDIDATES = {
    role: tuple(
        dict.fromkeys(
            [role, *(family[role] for family in BASE_FAMILY_TOKENS.values() if role in family)]
        )
    )
    for role in SPECIAL_TOKENS
}
# The files beside a base's tokenizer.json that say how it is used (EOS, BOS, pad, chat template).
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
_MODEL_CONFIGS = ("config.json", "generation_config.json")  # only their eos_token_id is read

# The pre-tokenizer cuts text into pieces that BPE never merges across. Every character falls in
# one of the alternatives, tried in order:
_PIECES = (
    r"[^\r\n\p{L}\p{N}]?\p{L}+",  # a word with one space or symbol before it: " self", ".append"
    r"\p{N}{1,3}",  # digits, at most three at a time, so numbers do not each become a token
    r" ?[^\s\p{L}\p{N}]+",  # a run of punctuation with one space before it: " +=", "):", " #"
    r"[\r\n]+[^\S\r\n]*",  # line breaks with the next line's indentation, which code repeats
    r"[^\S\r\n]+(?!\S)",  # blanks before a line break or the end, or all but the last before a word
    r"[^\S\r\n]+",  # a blank the others leave: before a digit, a tab before a symbol
)
_PATTERN = "|".join(_PIECES)

# Indentation that must be one token, alone and after a newline, whatever the corpus.
_SPACE_RUNS = (*range(2, 17), 24, 32)
_TAB_RUNS = (1, 2, 3, 4)
_INDENTS = tuple(" " * n for n in _SPACE_RUNS) + tuple("\t" * n for n in _TAB_RUNS)
# Merges inside those pieces can only build a run of one blank character, alone or after a
# newline: at most two tokens per run length.
_INDENT_TOKENS = 2 * (max(_SPACE_RUNS) + max(_TAB_RUNS))
# The guarantee holds from this many free merges up (a vocabulary of 600); a smaller vocabulary
# gets the same weight, which keeps the extra text under 3.5 times the corpus.
_MIN_SPARE = 256
_BYTES = 256


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train byte-level BPE on `texts`, with SPECIAL_TOKENS as ids 0..15 and indentation as tokens.

    Each of the user's texts is read once, so `texts` may be a generator over a large dataset.
    """
    if vocab_size < _BYTES + len(SPECIAL_TOKENS):
        raise ZenCoderError(
            f"vocab_size {vocab_size} leaves no room for the {_BYTES} bytes and "
            f"{len(SPECIAL_TOKENS)} special tokens; set it to at least 1,000"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_with_indentation(texts, vocab_size), trainer=trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def _with_indentation(texts: Iterable[str], vocab_size: int) -> Iterator[str]:
    """Yield `texts`, then each indentation piece as often as needed to make it a token.

    The weight makes this a guarantee rather than a hope. BPE merges the most frequent pair first,
    and while an indentation piece is not yet one token it holds a pair seen at least `weight`
    times, so only merges seen that often can come before its own. Any other merge seen c times
    removes at least c/2 symbols from the user's text, which starts with one symbol per byte, so
    at most 2 * bytes / weight of them are seen that often. Choosing `weight` so that they and the
    indentation's own merges (at most _INDENT_TOKENS) fit the vocabulary makes every piece a token.
    """
    corpus_bytes = 0
    for text in texts:
        corpus_bytes += len(text.encode())
        yield text
    spare = vocab_size - _BYTES - len(SPECIAL_TOKENS) - _INDENT_TOKENS
    weight = max(1, math.ceil(2 * corpus_bytes / max(spare, _MIN_SPARE)))
    # "x" ends the previous piece; the run before "\n" is a piece alone, the one after it is
    # "\n" + run. Texts of up to 1,024 blocks (450 KB) keep memory flat for any weight.
    block = "".join(f"x{run}\n{run}" for run in _INDENTS)
    for done in range(0, weight, 1024):
        yield block * min(1024, weight - done)


def save_tokenizer(tokenizer: Tokenizer, directory: Path, context_length: int) -> None:
    """Write a tokenizer `train_tokenizer` made: tokenizer.json and the two files `transformers`
    reads, each atomically.

    The Hugging Face configuration lets `AutoTokenizer.from_pretrained(directory)` load the
    tokenizer offline for evaluation and serving, with the same ids as ours: special-token
    strings in text stay text there too, and decoding does not touch spaces.
    """
    write_bytes_atomic(directory / "tokenizer.json", tokenizer.to_str().encode())
    special_tokens = {
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": list(SPECIAL_TOKENS),
    }
    write_json_atomic(directory / SPECIAL_TOKENS_MAP, special_tokens)
    config = {
        **special_tokens,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
    }
    write_json_atomic(directory / TOKENIZER_CONFIG, config)


def tokenizer_file(path: Path) -> Path:
    """The tokenizer.json that `path` (the file, or a directory holding it) names."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ZenCoderError(
            f"tokenizer not found: {file}; pass a directory holding tokenizer.json or the file"
        )
    return file


def tokenizer_sources(path: Path) -> list[Path]:
    """The files `read_tokenizer(path)` reads: tokenizer.json and, for a directory, the settings
    beside it. What a tokenizer is, for telling whether prepared data is up to date."""
    file = tokenizer_file(path)
    if not path.is_dir():
        return [file]
    settings = (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, *_MODEL_CONFIGS)
    return [file, *(path / name for name in settings if (path / name).is_file())]


@dataclass(frozen=True)
class RoleTokenizer:
    """A tokenizer with the token that plays each of zen-coder's roles in it.

    `ids` maps every name of SPECIAL_TOKENS to a token id. `bos_id` is the token the tokenizer
    puts before every text, as Llama, CodeLlama and DeepSeek-Coder were trained (None where it
    puts none): `prepare` starts every sample with it and inference every prompt. `added` names
    the role tokens this reading added after the vocabulary; `config` and `special_tokens_map`
    are the settings files read beside tokenizer.json (empty for a lone file).
    """

    tokenizer: Tokenizer
    ids: dict[str, int]
    bos_id: int | None
    added: tuple[str, ...]
    config: dict[str, Any]
    special_tokens_map: dict[str, Any]

    @property
    def eos_id(self) -> int:
        return self.ids[EOS]

    @property
    def pad_id(self) -> int:
        return self.ids[PAD]

    def role_tokens(self) -> dict[str, str]:
        """Each role's token as text: what a prompt spells to get it, and a completion shows."""
        return {role: self.tokenizer.id_to_token(id_) for role, id_ in self.ids.items()}


def read_tokenizer(path: Path) -> RoleTokenizer:
    """Read a tokenizer.json (or the directory holding it, with its settings), ours or a base
    model's, and find the token of each role, adding those it lacks as special tokens.

    The roles' tokens, in order of precedence: EOS is the token the settings name (the
    tokenizer_config.json's eos_token, else special_tokens_map.json's, else the eos_token_id of
    config.json or generation_config.json); pad is the named pad token when it is not the EOS
    (the trainer ignores pad targets, so a pad equal to EOS would hide every EOS target); every
    other role, and EOS where nothing names it, is its own name or a family's token
    (BASE_FAMILY_TOKENS), whichever the tokenizer has first. No two roles share a token. Role
    tokens are special, so text that spells one is encoded as text (`encode_special_tokens`).
    """
    file = tokenizer_file(path)
    tokenizer = _read_tokenizer_json(file)
    folder = path if path.is_dir() else None
    config = _settings(folder / TOKENIZER_CONFIG) if folder else {}
    special_tokens_map = _settings(folder / SPECIAL_TOKENS_MAP) if folder else {}
    named = {**special_tokens_map, **config}
    ids = _found_roles(tokenizer, named, folder, file)
    added = tuple(role for role in SPECIAL_TOKENS if role not in ids)
    tokenizer.add_special_tokens([AddedToken(role, special=True) for role in added])
    ids.update({role: tokenizer.token_to_id(role) for role in added})
    _make_special(tokenizer, set(ids.values()))
    tokenizer.encode_special_tokens = True
    ids = {role: ids[role] for role in SPECIAL_TOKENS}
    return RoleTokenizer(
        tokenizer, ids, _bos_id(tokenizer, named, file), added, config, special_tokens_map
    )


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of `read_tokenizer(path)`, for code that only encodes and decodes."""
    return read_tokenizer(path).tokenizer


def _read_tokenizer_json(file: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ZenCoderError(
            f"{file} is not a tokenizer.json: {reason}; pass a Hugging Face tokenizer.json file"
        ) from error


def _settings(path: Path) -> dict[str, Any]:
    """A settings file beside tokenizer.json, {} where there is none."""
    if not path.is_file():
        return {}
    fix = f"repair it, or pass only {path.parent / 'tokenizer.json'} to go without its settings"
    settings = read_json(path, "", fix)
    if not isinstance(settings, dict):
        raise ZenCoderError(f"{path} is unreadable; {fix}")
    return settings


def _token_name(value: object) -> str | None:
    """A token as the settings files write one: its text, or {"content": text, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _found_roles(
    tokenizer: Tokenizer, named: dict[str, Any], folder: Path | None, file: Path
) -> dict[str, int]:
    """The roles the tokenizer has a token for, with its id; no two roles share one."""
    ids: dict[str, int] = {}
    eos = _named_id(tokenizer, named, "eos_token", file)
    if eos is None and folder is not None:
        eos = _model_eos_id(tokenizer, folder)
    if eos is not None:
        ids[EOS] = eos
    pad = _named_id(tokenizer, named, "pad_token", file)
    if pad is not None and pad != eos:
        ids[PAD] = pad
    for role in SPECIAL_TOKENS:
        if role in ids:
            continue
        taken = set(ids.values())
        found = (tokenizer.token_to_id(token) for token in _CANDIDATES[role])
        id_ = next((id_ for id_ in found if id_ is not None and id_ not in taken), None)
        if id_ is not None:
            ids[role] = id_
    return ids


def _named_id(tokenizer: Tokenizer, named: dict[str, Any], key: str, file: Path) -> int | None:
    """The id of the token the settings name for `key` ("eos_token"), None if they name none."""
    name = _token_name(named.get(key))
    if name is None:
        return None
    id_ = tokenizer.token_to_id(name)
    if id_ is None:
        raise ZenCoderError(
            f"the settings beside {file} name {key} {name!r}, which {file.name} does not have; "
            "pass the folder of one model, whose files belong together"
        )
    return id_


def _model_eos_id(tokenizer: Tokenizer, folder: Path) -> int | None:
    """The eos_token_id of the model's config.json or generation_config.json (the first of a
    list), where the tokenizer's own settings name no EOS."""
    for name in _MODEL_CONFIGS:
        value = _settings(folder / name).get("eos_token_id")
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int) and tokenizer.id_to_token(value) is not None:
            return value
    return None


def _bos_id(tokenizer: Tokenizer, named: dict[str, Any], file: Path) -> int | None:
    """The token the base puts before every text: tokenizer_config.json's add_bos_token decides
    where it says, as in `transformers`; otherwise the tokenizer's post-processor, seen in what
    it adds to a one-letter text."""
    if "add_bos_token" in named:
        if not named["add_bos_token"]:
            return None
        bos = _named_id(tokenizer, named, "bos_token", file)
        if bos is None:
            raise ZenCoderError(
                f"the settings beside {file} set add_bos_token but name no bos_token; "
                "pass the folder of one model, whose files belong together"
            )
        return bos
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    framed = tokenizer.encode("a", add_special_tokens=True).ids
    starts_with_one = len(framed) > len(plain) and framed[1 : 1 + len(plain)] == plain
    return framed[0] if starts_with_one else None


def _make_special(tokenizer: Tokenizer, ids: set[int]) -> None:
    """Mark the added tokens among `ids` special, so `encode_special_tokens` keeps text that
    spells one from becoming it (a base may add a marker as an ordinary added token)."""
    ordinary = [
        token
        for id_, token in tokenizer.get_added_tokens_decoder().items()
        if id_ in ids and not token.special
    ]
    tokenizer.add_special_tokens(
        [
            AddedToken(
                token.content,
                single_word=token.single_word,
                lstrip=token.lstrip,
                rstrip=token.rstrip,
                normalized=token.normalized,
                special=True,
            )
            for token in ordinary
        ]
    )


def save_base_tokenizer(tokenizer: RoleTokenizer, directory: Path, context_length: int) -> None:
    """Write a base model's tokenizer as `read_tokenizer` extended it, each file atomically.

    tokenizer.json is the base's with the added role tokens; tokenizer_config.json and
    special_tokens_map.json keep the base's settings (EOS, BOS, pad, chat template, class) and
    list the added tokens as additional special tokens, so `transformers.AutoTokenizer` reads
    the folder with zen-coder's ids and the base's EOS. A base with no pad token gets the pad
    role's; `model_max_length` becomes the context length trained.
    """
    write_bytes_atomic(directory / "tokenizer.json", tokenizer.tokenizer.to_str().encode())
    roles = tokenizer.role_tokens()
    config = dict(
        tokenizer.config
        or {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    )
    named = {"eos_token": roles[EOS], "pad_token": roles[PAD]}
    if tokenizer.bos_id is not None:
        named["bos_token"] = tokenizer.tokenizer.id_to_token(tokenizer.bos_id)
    for key, token in named.items():
        if _token_name(config.get(key)) is None:
            config[key] = tokenizer.special_tokens_map.get(key) or token
    extra = _extra_key(config)
    config[extra] = [*(config.get(extra) or []), *tokenizer.added]
    config["added_tokens_decoder"] = {
        str(id_): _added_token_entry(token)
        for id_, token in sorted(tokenizer.tokenizer.get_added_tokens_decoder().items())
    }
    config["model_max_length"] = context_length
    special_tokens_map = {
        **tokenizer.special_tokens_map,
        **{key: config[key] for key in named},
        extra: config[extra],
    }
    write_json_atomic(directory / SPECIAL_TOKENS_MAP, special_tokens_map)
    write_json_atomic(directory / TOKENIZER_CONFIG, config)


def _extra_key(config: dict[str, Any]) -> str:
    """Where the settings list extra special tokens: `transformers` 5 writes extra_special_tokens,
    earlier versions (and most published models) additional_special_tokens."""
    if isinstance(config.get("extra_special_tokens"), list):
        return "extra_special_tokens"
    return "additional_special_tokens"


def _added_token_entry(token: AddedToken) -> dict[str, Any]:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }
