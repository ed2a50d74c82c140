"""The tokenizer: exact round trips, fixed special ids, indentation tokens, Hugging Face loading."""

from __future__ import annotations

import os
import re
import sysconfig
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from zen_coder.data.tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    read_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from zen_coder.errors import ZenCoderError

SNIPPETS = [
    "def area(radius: float) -> float:\n    return 3.14159 * radius**2\n",
    "class Box:\n\tdef __init__(self):\n\t\tself.items = []  # <|endoftext|>\n",
    'if (x) {\r\n        y = "héllo ✓";\r\n}\r\n',
]
SPACE_RUNS = [" " * n for n in (*range(2, 17), 24, 32)]
TAB_RUNS = ["\t" * n for n in range(1, 5)]


def _stdlib_python(limit: int) -> list[str]:
    """About `limit` characters of real Python: the standard library's top-level modules."""
    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[: limit - size]
        texts.append(text)
        size += len(text)
        if size >= limit:
            return texts
    raise AssertionError("the standard library has too little Python for this test")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _stdlib_python(200_000)


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return train_tokenizer(corpus, 2_000)


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(tokenizer, directory, context_length=4096)
    return directory


@pytest.fixture(scope="module")
def loaded(saved) -> Tokenizer:
    return load_tokenizer(saved)


def _round_trips(tokenizer: Tokenizer, text: str) -> bool:
    return tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_training_gives_the_requested_vocabulary(corpus):
    tokenizer = train_tokenizer(corpus, 2_000)
    assert tokenizer.get_vocab_size() == 2_000


def test_compresses_python(tokenizer, corpus):
    text = "".join(corpus)
    assert len(text) / len(tokenizer.encode(text).ids) > 2.5


def test_special_tokens_take_the_first_ids_in_order(tokenizer, saved):
    expected = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    assert {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS} == expected
    read = read_tokenizer(saved)
    assert read.ids == expected
    assert (read.bos_id, read.added) == (None, ())  # ours: no BOS, nothing to add
    assert len(SPECIAL_TOKENS) == 16


# Text made of arbitrary characters and of pieces the tokenizer treats specially.
texts = st.lists(
    st.one_of(st.text(), st.sampled_from([*SPECIAL_TOKENS, "\n    ", "\t", "\r\n", "  ", "123"]))
).map("".join)


@given(texts)
def test_any_text_round_trips(tokenizer, text):
    assert _round_trips(tokenizer, text)


@given(texts)
def test_any_text_round_trips_after_loading(loaded, text):
    assert _round_trips(loaded, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x00",
        "\r\n",
        "\t\t",
        "🐍 emoji 👩‍💻",
        "<|endoftext|>",
        "<|pad|><|fim_middle|>",
        unicodedata.normalize("NFC", "é"),
        unicodedata.normalize("NFD", "é"),
        "x = 12345678\n" + " " * 40 + "y\n",
        *SNIPPETS,
    ],
)
def test_edge_cases_round_trip_unchanged(tokenizer, text):
    assert _round_trips(tokenizer, text)


def test_special_token_strings_in_text_stay_text(tokenizer, loaded):
    for each in (tokenizer, loaded):
        for token in SPECIAL_TOKENS:
            assert min(each.encode(f"a {token} b").ids) >= len(SPECIAL_TOKENS)


def test_indentation_is_one_token(tokenizer):
    assert tokenizer.encode("\n        x").tokens[0] == "Ċ" + "Ġ" * 8
    assert len(tokenizer.encode("    ").ids) == 1


@pytest.mark.parametrize("vocab_size", [1_000, 8_000])
def test_every_indentation_run_is_one_token(corpus, vocab_size):
    """Guaranteed from 1,000 tokens up, including runs this corpus barely has (13, 32, 4 tabs)."""
    tokenizer = train_tokenizer(corpus, vocab_size)
    for run in SPACE_RUNS + TAB_RUNS:
        for text in (run, "\n" + run):
            assert len(tokenizer.encode(text).ids) == 1, repr(text)


def test_indentation_is_one_token_without_any_corpus():
    tokenizer = train_tokenizer([], 1_000)
    assert len(tokenizer.encode("\n" + " " * 24).ids) == 1


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(ZenCoderError, match="vocab_size 100 leaves no room"):
        train_tokenizer(["x"], 100)


def test_save_writes_the_three_files(saved):
    assert sorted(os.listdir(saved)) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.parametrize("loader", ["AutoTokenizer", "PreTrainedTokenizerFast"])
def test_transformers_loads_it_with_the_same_ids(tokenizer, saved, loader, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = getattr(transformers, loader).from_pretrained(saved)
    for text in SNIPPETS:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == tokenizer.encode(text).ids
        assert hf.decode(ids) == text
    assert (hf.eos_token, hf.bos_token, hf.pad_token) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<|pad|>",
    )
    assert (hf.eos_token_id, hf.pad_token_id) == (0, 1)
    assert hf.model_max_length == 4096
    assert hf.clean_up_tokenization_spaces is False
    assert set(SPECIAL_TOKENS) <= set(hf.all_special_tokens)


def _foreign_tokenizer(path: Path) -> int:
    """Save a small byte-level BPE that knows only <|endoftext|>, like a base model's; its size."""
    foreign = Tokenizer(models.BPE())
    foreign.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    foreign.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|unrelated|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    foreign.train_from_iterator(["hello world\n", "def main():\n    pass\n"] * 10, trainer)
    foreign.save(str(path))
    return foreign.get_vocab_size()


def test_a_foreign_tokenizer_gets_the_missing_special_tokens(tmp_path):
    size = _foreign_tokenizer(tmp_path / "tokenizer.json")
    read = read_tokenizer(tmp_path)
    tokenizer, ids = read.tokenizer, read.ids
    assert ids["<|endoftext|>"] == 1
    others = [ids[token] for token in SPECIAL_TOKENS if token != "<|endoftext|>"]
    assert others == list(range(size, size + len(others)))
    for text in ["<|repo|> hello\n\tworld <|endoftext|>", *SNIPPETS]:
        encoded = tokenizer.encode(text).ids
        assert not set(encoded) & set(ids.values())
        assert _round_trips(tokenizer, text)


def test_missing_tokenizer_is_reported(tmp_path):
    for path, missing in [(tmp_path, tmp_path / "tokenizer.json"), (tmp_path / "x.json",) * 2]:
        with pytest.raises(ZenCoderError, match=re.escape(f"tokenizer not found: {missing}; ")):
            load_tokenizer(path)


def test_a_file_that_is_not_a_tokenizer_is_reported(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text('{"model": "none"}')
    with pytest.raises(ZenCoderError, match=r"notes.json is not a tokenizer.json: \S"):
        load_tokenizer(path)
