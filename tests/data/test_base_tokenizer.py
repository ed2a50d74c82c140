"""A base model's tokenizer: its own tokens play zen-coder's roles and only the missing ones are
added; the saved folder reads back the same in zen-coder and in transformers; `prepare` frames
every sample with the base's tokens (BOS, FIM markers, EOS)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.data import bases
from tests.data.test_prepare import SMALL, build_history, mined
from zen_coder.data.loader import open_split
from zen_coder.data.pipeline import prepare
from zen_coder.data.tokenizer import SPECIAL_TOKENS, read_tokenizer, save_base_tokenizer
from zen_coder.errors import ZenCoderError

BASES = {
    "qwen": bases.qwen,
    "starcoder": bases.starcoder,
    "codellama": bases.codellama,
    "plain": bases.plain,
}
# The roles each base lacks, counted by hand from tests/data/bases.py: 16 less those it has.
ADDED = {"qwen": 10, "starcoder": 7, "codellama": 12, "plain": 15}
SNIPPETS = [
    "def area(radius: float) -> float:\n    return 3.14159 * radius**2\n",
    'if (x) {\r\n        y = "héllo ✓";\r\n}\r\n',
]
# A file that spells control tokens of every family: it must stay text.
SPELLED = "MARKERS = '<|fim_prefix|><|endoftext|><|repo_name|><s></s>▁<PRE> <PRE><fim_prefix>'\n"


@pytest.fixture(params=list(BASES))
def name(request) -> str:
    return request.param


@pytest.fixture
def base(name, tmp_path) -> bases.Base:
    return BASES[name](tmp_path / name)


def test_a_role_is_the_bases_own_token_and_only_missing_ones_are_added(base, name):
    """Broken by hand once: with each role looked up by its own name only (no family tokens),
    every base but `plain` got all its markers added twice and failed here."""
    read = read_tokenizer(base.path)
    tokenizer = read.tokenizer
    assert {role: tokenizer.id_to_token(read.ids[role]) for role in base.roles} == base.roles
    missing = tuple(role for role in SPECIAL_TOKENS if role not in base.roles)
    assert read.added == missing
    assert len(missing) == ADDED[name]
    assert [read.ids[role] for role in missing] == list(range(base.size, base.size + len(missing)))
    assert tokenizer.get_vocab_size() == base.size + len(missing)


def test_bos_is_the_one_the_base_puts_before_every_text(base):
    """Broken by hand once: reading no BOS at all failed the CodeLlama case."""
    read = read_tokenizer(base.path)
    expected = None if base.bos is None else read.tokenizer.token_to_id(base.bos)
    assert read.bos_id == expected


def test_bos_comes_from_add_bos_token_or_else_the_post_processor(tmp_path):
    base = bases.codellama(tmp_path / "codellama")
    lone = read_tokenizer(base.path / "tokenizer.json")  # no settings: the post-processor says
    assert lone.bos_id == lone.tokenizer.token_to_id("<s>")
    config = json.loads((base.path / "tokenizer_config.json").read_text())
    (base.path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    assert read_tokenizer(base.path).bos_id is None


def test_eos_is_the_one_the_settings_name_and_a_pad_equal_to_it_is_not_the_pad(tmp_path):
    """An instruct model's EOS (<|im_end|>) ends documents; its pad (<|endoftext|>) is then a
    pad of its own, so nothing is added for the pad role. Broken by hand once: taking the first
    family EOS instead of the named one gave <|endoftext|> here."""
    base = bases.qwen(tmp_path / "instruct", eos="<|im_end|>")
    read = read_tokenizer(base.path)
    tokens = read.role_tokens()
    assert (tokens["<|endoftext|>"], tokens["<|pad|>"]) == ("<|im_end|>", "<|endoftext|>")
    assert len(read.added) == ADDED["qwen"] - 1
    pretrained = read_tokenizer(bases.qwen(tmp_path / "base").path).role_tokens()
    assert (pretrained["<|endoftext|>"], pretrained["<|pad|>"]) == ("<|endoftext|>", "<|pad|>")


def test_two_roles_never_share_a_token(tmp_path):
    """A base whose EOS is also a family's file marker keeps it as the EOS; the path role gets a
    token of its own (else every file marker would end a document). Broken by hand once: with
    taken tokens allowed, both roles were <|file_sep|>."""
    base = bases.qwen(tmp_path / "qwen", eos="<|file_sep|>")
    read = read_tokenizer(base.path)
    assert read.role_tokens()["<|endoftext|>"] == "<|file_sep|>"
    assert read.role_tokens()["<|path|>"] == "<|path|>"
    assert len(set(read.ids.values())) == len(SPECIAL_TOKENS)


def test_a_lone_file_falls_back_to_what_the_file_says(tmp_path):
    """Without config.json the plain base's <eos> is unknown: an EOS of our own is added."""
    base = bases.plain(tmp_path / "plain")
    assert read_tokenizer(base.path).role_tokens()["<|endoftext|>"] == "<eos>"
    lone = read_tokenizer(base.path / "tokenizer.json")
    assert lone.role_tokens()["<|endoftext|>"] == "<|endoftext|>"
    assert len(lone.added) == 16


def test_text_that_spells_a_marker_stays_text(base):
    """Broken by hand once: without marking the base's markers special, CodeLlama's ▁<PRE>
    (an ordinary added token there) was matched in text and this failed."""
    read = read_tokenizer(base.path)
    text = " ".join([*SPECIAL_TOKENS, *base.roles.values(), SPELLED])
    ids = read.tokenizer.encode(text, add_special_tokens=False).ids
    assert not set(ids) & set(read.ids.values())


def test_transformers_reads_the_saved_folder_with_our_ids_and_the_bases_eos(
    base, tmp_path, monkeypatch
):
    """Broken by hand once: writing zen-coder's own settings for a base (as before) failed here
    for every base; transformers reported <|endoftext|> as the CodeLlama and plain bases' EOS."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    read = read_tokenizer(base.path)
    out = tmp_path / "saved"
    out.mkdir()
    save_base_tokenizer(read, out, context_length=256)
    again = read_tokenizer(out)
    assert (again.ids, again.bos_id, again.added) == (read.ids, read.bos_id, ())
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.eos_token == base.eos
    assert hf.bos_token == base.bos
    start = [] if read.bos_id is None else [read.bos_id]
    for text in SNIPPETS:
        ids = read.tokenizer.encode(text, add_special_tokens=False).ids
        assert hf(text, add_special_tokens=False).input_ids == ids
        assert hf(text).input_ids == start + ids
    roles = read.role_tokens()
    assert [hf.convert_tokens_to_ids(roles[role]) for role in SPECIAL_TOKENS] == [
        read.ids[role] for role in SPECIAL_TOKENS
    ]
    assert set(read.added) <= set(hf.all_special_tokens)
    assert hf.model_max_length == 256


def test_the_bases_other_settings_are_kept(tmp_path):
    base = bases.qwen(tmp_path / "qwen")
    read = read_tokenizer(base.path)
    out = tmp_path / "saved"
    out.mkdir()
    save_base_tokenizer(read, out, context_length=256)
    original = json.loads((base.path / "tokenizer_config.json").read_text())
    saved = json.loads((out / "tokenizer_config.json").read_text())
    for key in ("tokenizer_class", "chat_template", "eos_token", "pad_token", "errors"):
        assert saved[key] == original[key]
    extra = original["additional_special_tokens"]
    assert saved["additional_special_tokens"] == [*extra, *read.added]
    assert saved["model_max_length"] == 256


def test_bad_settings_are_one_line_errors(tmp_path):
    base = bases.qwen(tmp_path / "qwen")
    config = base.path / "tokenizer_config.json"
    config.write_text("{not json")
    with pytest.raises(ZenCoderError, match=r"tokenizer_config.json is unreadable; repair it, or "):
        read_tokenizer(base.path)
    config.write_text(json.dumps({"eos_token": "<|nowhere|>"}))
    with pytest.raises(ZenCoderError, match=r"name eos_token '<\|nowhere\|>', which tokenizer"):
        read_tokenizer(base.path)
    config.write_text(json.dumps({"add_bos_token": True}))
    with pytest.raises(ZenCoderError, match="set add_bos_token but name no bos_token") as error:
        read_tokenizer(base.path)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# `prepare` with a base tokenizer


@pytest.fixture(scope="module")
def mined_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mined-for-bases")
    return mined(root, build_history(root / "repo", extra={"pkg/spelled.py": SPELLED}))


def _documents(prepared: Path, split: str, eos: int) -> list[list[int]]:
    """The split's documents in packing order: sequences continue one another, padding aside."""
    arrays = open_split(prepared, split)
    stream = np.asarray(arrays["tokens"])[np.asarray(arrays["segment"]) > 0].tolist()
    cuts = [index + 1 for index, token in enumerate(stream) if token == eos]
    return [stream[start:end] for start, end in zip([0, *cuts[:-1]], cuts, strict=True)]


@pytest.mark.parametrize("name", ["qwen", "codellama"])
def test_prepare_frames_every_sample_with_the_bases_tokens(name, mined_dir, tmp_path):
    """Each document is BOS (where the base has one) ... EOS, in the base's ids, and its FIM
    samples use the base's markers; the spelled markers in pkg/spelled.py stayed text. Broken by
    hand once each: with `encode_special_tokens` left off, the spelled <|endoftext|> became an EOS
    and the document count exceeded the sample count; with no BOS packed, the CodeLlama case
    failed on the documents' first tokens."""
    base = BASES[name](tmp_path / "base")
    config = dataclasses.replace(SMALL, fim_rate=1.0, context_length=256)
    report = prepare(mined_dir, tmp_path / "prepared", config, tokenizer=base.path, benchmarks=[])
    manifest, prepared = report.manifest, report.out
    tokenizer = read_tokenizer(prepared).tokenizer
    ids = manifest["special_tokens"]
    assert {role: tokenizer.id_to_token(ids[role]) for role in base.roles} == base.roles
    assert manifest["vocab_size"] == base.size + ADDED[name]
    assert len(manifest["added_tokens"]) == ADDED[name]
    bos = None if base.bos is None else tokenizer.token_to_id(base.bos)
    assert manifest["bos_token_id"] == bos
    fim = [ids["<|fim_prefix|>"], ids["<|fim_suffix|>"], ids["<|fim_middle|>"]]
    openings = {ids[role] for role in ("<|repo|>", "<|history|>", "<|instruction|>")}
    for split in ("train", "validation"):
        documents = _documents(prepared, split, ids["<|endoftext|>"])
        samples = {key: n for key, n in manifest["samples"].items() if key.startswith(split)}
        assert len(documents) == sum(samples.values())
        assert {document[0] for document in documents} == ({bos} if bos else openings)
        with_fim = [document for document in documents if fim[0] in document]
        assert len(with_fim) == samples[f"{split}/fim"]
        for document in with_fim:
            assert sum(token in fim for token in document) == 3
            assert max(document.index(marker) for marker in fim) == document.index(fim[2])
    text = tokenizer.decode(with_fim[0], skip_special_tokens=False)
    if name == "qwen":
        assert text.startswith("<|repo_name|>repo<|file_sep|>pkg/")
        assert "<|fim_middle|>" in text and text.endswith("<|endoftext|>")
    else:  # CodeLlama's decoder shows ▁ as a space
        assert text.startswith("<s>") and " <MID>" in text and text.endswith("</s>")
        assert tokenizer.token_to_id("<|fim_prefix|>") is None
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoTokenizer.from_pretrained(prepared).eos_token == base.eos


def test_changed_base_settings_rebuild_the_prepared_data(mined_dir, tmp_path):
    """The settings beside tokenizer.json are part of the tokenizer: another EOS, another run.
    Broken by hand once: with only tokenizer.json in the identity, the second run was reused."""
    base = bases.qwen(tmp_path / "base")
    out = tmp_path / "prepared"
    first = prepare(mined_dir, out, SMALL, tokenizer=base.path, benchmarks=[])
    assert prepare(mined_dir, out, SMALL, tokenizer=base.path, benchmarks=[]).reused
    config = json.loads((base.path / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_end|>"
    (base.path / "tokenizer_config.json").write_text(json.dumps(config))
    second = prepare(mined_dir, out, SMALL, tokenizer=base.path, benchmarks=[])
    assert not second.reused
    eos = second.manifest["special_tokens"]["<|endoftext|>"]
    assert eos != first.manifest["special_tokens"]["<|endoftext|>"]
    assert read_tokenizer(out).tokenizer.id_to_token(eos) == "<|im_end|>"
