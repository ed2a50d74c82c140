"""The tokenizer of the `prepare` stage: byte-level BPE trained on the mined code and messages.

Byte-level BPE with no normalizer maps any text to tokens and back exactly: every byte has a
token, and nothing is rewritten on the way in, so code, NFD file names and stray control
characters survive. The special tokens (SPECIAL_TOKENS, ids 0..15) frame the training examples;
training code inserts them by id, and the tokenizers here encode their strings as ordinary text,
so a file that contains "<|endoftext|>" cannot inject a control token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from zen_coder.errors import ZenCoderError
from zen_coder.files import write_bytes_atomic, write_json_atomic

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
_EOS = "<|endoftext|>"
_PAD = "<|pad|>"

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
    """Write tokenizer.json and the two files `transformers` reads, each atomically.

    The Hugging Face configuration lets `AutoTokenizer.from_pretrained(directory)` load the
    tokenizer offline for evaluation and serving, with the same ids as ours: special-token
    strings in text stay text there too, and decoding does not touch spaces.
    """
    write_bytes_atomic(directory / "tokenizer.json", tokenizer.to_str().encode())
    special_tokens = {
        "bos_token": _EOS,
        "eos_token": _EOS,
        "pad_token": _PAD,
        "additional_special_tokens": list(SPECIAL_TOKENS),
    }
    write_json_atomic(directory / "special_tokens_map.json", special_tokens)
    config = {
        **special_tokens,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
    }
    write_json_atomic(directory / "tokenizer_config.json", config)


def tokenizer_file(path: Path) -> Path:
    """The tokenizer.json that `path` (the file, or a directory holding it) names."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ZenCoderError(
            f"tokenizer not found: {file}; pass a directory holding tokenizer.json or the file"
        )
    return file


def load_tokenizer(path: Path) -> Tokenizer:
    """Read a tokenizer.json (or the directory holding it), ours or one trained elsewhere.

    A base model's tokenizer used for fine-tuning lacks some of SPECIAL_TOKENS; they are added as
    special tokens after its vocabulary, so `special_ids` works for any loaded tokenizer.
    """
    file = tokenizer_file(path)
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ZenCoderError(
            f"{file} is not a tokenizer.json: {reason}; pass a Hugging Face tokenizer.json file"
        ) from error
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in missing])
    tokenizer.encode_special_tokens = True
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Map each of SPECIAL_TOKENS to its id, for code that builds examples from ids."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, id_ in ids.items() if id_ is None]
    if missing:
        raise ZenCoderError(
            f"the tokenizer has no {', '.join(missing)}; load it with load_tokenizer to add them"
        )
    return ids
