"""Prompt formats: the layout each model was trained on, and packing into a token budget, with
real tokenizers (zen-coder's, and bases shaped like Qwen2.5-Coder, StarCoder2, Code Llama)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data import bases
from tests.models import tokenizer_folder  # noqa: F401 - a fixture
from zen_coder.data.config import PrepareConfig
from zen_coder.data.pack import tokenize
from zen_coder.data.samples import RecordSamples
from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer, save_base_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.prompts import (
    Budget,
    Change,
    PromptFormat,
    PromptParts,
    Snippet,
    canonical_language,
)

CODE = "".join(f"def function_{i}(value):\n    return value * {i}\n\n" for i in range(200))


def counter(roles: RoleTokenizer):
    return lambda text: len(roles.tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def zen(tokenizer_folder) -> RoleTokenizer:  # noqa: F811 - the fixture imported above
    return read_tokenizer(tokenizer_folder)


def test_native_prompt_is_the_fim_sample_prepare_trains_up_to_the_middle(zen):
    """Token for token what `prepare` packs for a fill-in-the-middle sample of the same file,
    cut after <|fim_middle|>. (Checked to fail with the path and language headers swapped.)"""
    config = PrepareConfig(fim_rate=1.0, fim_spm_rate=0.0)
    row = {"repo": "org/proj", "path": "pkg/shapes.py", "language": "Python", "commit": "c1"}
    row["history_position"] = 4
    sample = RecordSamples(config).file(row, CODE[:3000], "train")
    texts = [value for special, value, _ in sample.parts if not special]
    prefix, suffix = texts[3], texts[4]
    [document] = tokenize([sample], zen, {}, {})
    trained = document.tokens.tolist()
    trained = trained[: trained.index(zen.ids["<|fim_middle|>"]) + 1]

    form = PromptFormat.from_tokenizer(zen)
    parts = PromptParts(prefix, suffix, path="pkg/shapes.py", language="python", repo="org/proj")
    prompt = form.build(parts, Budget(tokens=100_000), counter(zen))
    start = [] if zen.bos_id is None else [zen.bos_id]
    assert form.layout == "zen-coder"
    assert start + prompt.ids(zen.tokenizer) == trained
    assert prompt.prompt_tokens == len(trained) - len(start)


def test_code_that_spells_a_role_token_stays_text(zen):
    """`Prompt.ids` inserts special tokens by id only: a file holding "<|endoftext|>" cannot end
    the prompt. (Checked to fail when text is encoded with special tokens parsed.)"""
    form = PromptFormat.from_tokenizer(zen)
    parts = PromptParts("x = '<|endoftext|><|fim_middle|>'\n", "", path="a.py")
    ids = form.build(parts, Budget(), counter(zen)).ids(zen.tokenizer)
    assert zen.eos_id not in ids
    assert ids.count(zen.ids["<|fim_middle|>"]) == 1


def test_plain_continuation_uses_the_file_format(zen):
    form = PromptFormat.from_tokenizer(zen)
    text = form.build(PromptParts("import os\n", None, path="a.py"), Budget(), counter(zen)).text
    assert text == "<|repo|><|path|>a.py<|lang|>Python<|after|>import os\n"


def test_native_context_is_history_then_files_then_the_fim_block(zen):
    form = PromptFormat.from_tokenizer(zen)
    parts = PromptParts(
        "def f():\n    return ",
        "\n",
        path="pkg/a.py",
        language="Python",
        repo="org/proj",
        snippets=[Snippet("pkg/b.py", "B = 2\n", 1.0), Snippet("pkg/c.py", "C = 3\n", 5.0)],
        changes=[
            Change("2" * 40, "second", "+two\n", 7),
            Change("1" * 40, "first", "+one\n", 6),
        ],
    )
    prompt = form.build(parts, Budget(), counter(zen))
    header = "<|repo|>org/proj<|path|>pkg/{}<|lang|>Python"
    assert prompt.text == (
        "<|history|>" + header.format("a.py") + "<|change|><|message|>first<|diff|>+one\n"
        "<|change|><|message|>second<|diff|>+two\n"
        + header.format("b.py")
        + "<|after|>B = 2\n"
        + header.format("c.py")  # the best snippet sits next to the code
        + "<|after|>C = 3\n"
        + header.format("a.py")
        + "<|fim_prefix|>def f():\n    return <|fim_suffix|>\n<|fim_middle|>"
    )


def test_a_published_qwen_base_gets_its_repository_layout(tmp_path: Path):
    """A base as published (its tokenizer lacks zen-coder's other roles) keeps the layout it
    was pretrained on: Qwen2.5-Coder's documented repository-level prompt."""
    roles = read_tokenizer(bases.qwen(tmp_path / "qwen").path)
    form = PromptFormat.from_tokenizer(roles)
    parts = PromptParts(
        "def f():\n    ",
        "\n",
        path="src/a.py",
        repo="org/proj",
        snippets=[Snippet("src/b.py", "B = 2", 1.0)],
    )
    prompt = form.build(parts, Budget(), counter(roles))
    assert form.layout == "qwen"
    assert prompt.text == (
        "<|repo_name|>org/proj\n<|file_sep|>src/b.py\nB = 2\n<|file_sep|>src/a.py\n"
        "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>"
    )
    assert {"<|endoftext|>", "<|file_sep|>", "<|fim_pad|>"} <= set(form.stop)
    ids = prompt.ids(roles.tokenizer)
    assert ids[0] == roles.tokenizer.token_to_id("<|repo_name|>")


def test_a_base_prepare_extended_gets_the_trained_layout_in_its_tokens(tmp_path: Path):
    """Fine-tuned from Qwen, the model learned zen-coder's formats with Qwen's markers."""
    save_base_tokenizer(read_tokenizer(bases.qwen(tmp_path / "qwen").path), tmp_path / "ft", 256)
    roles = read_tokenizer(tmp_path / "ft")
    form = PromptFormat.from_tokenizer(roles)
    text = form.build(PromptParts("x", "", path="a.py", repo="r"), Budget(), counter(roles)).text
    assert form.layout == "zen-coder"
    assert (
        text
        == "<|repo_name|>r<|file_sep|>a.py<|lang|>Python<|fim_prefix|>x<|fim_suffix|><|fim_middle|>"
    )


def test_starcoder2_puts_the_path_after_fim_prefix():
    form = PromptFormat.from_family("starcoder2")
    parts = PromptParts("a", "b", path="x.py", repo="r", snippets=[Snippet("y.py", "Y\n")])
    text = form.build(parts, Budget(), len).text
    assert text == (
        "<repo_name>r<file_sep>y.py\nY\n<file_sep><fim_prefix>x.py\na<fim_suffix>b<fim_middle>"
    )


def test_codestral_is_suffix_first_and_code_llama_spells_its_markers_with_spaces(tmp_path):
    parts = PromptParts("pre", "suf", path="x.py")
    assert PromptFormat.from_family("Codestral").build(parts, Budget(), len).text == (
        "[SUFFIX]suf[PREFIX]pre"
    )
    llama = PromptFormat.from_family("codellama")
    assert llama.build(parts, Budget(), len).text == "<PRE> pre <SUF>suf <MID>"
    roles = read_tokenizer(bases.codellama(tmp_path / "codellama").path)
    form = PromptFormat.from_tokenizer(roles)
    ids = form.build(parts, Budget(), counter(roles)).ids(roles.tokenizer)
    assert ids[0] == roles.tokenizer.token_to_id("▁<PRE>")
    assert roles.tokenizer.token_to_id("▁<MID>") == ids[-1]


def test_fim_only_families_get_context_as_comments():
    form = PromptFormat.from_family("DeepSeek-Coder")
    parts = PromptParts(
        "x = ",
        "",
        path="a.go",
        snippets=[Snippet("b.go", "func B() {}\n")],
        changes=[Change("a" * 40, "Add x\n\nbody", "+x\n", 3)],
    )
    text = form.build(parts, Budget(), len).text
    assert text.startswith(
        "<｜fim▁begin｜>// Recent change aaaaaaaaaaaa: Add x\n// +x\n"  # noqa: RUF001
        "// Path: b.go\n// func B() {}\nx = "
    )


def test_the_budget_keeps_the_code_nearest_the_cursor_and_gives_unused_shares_away(zen):
    """No context: prefix and suffix fill the budget; the prefix keeps its last lines, the
    suffix its first, each made of whole lines. (Checked to fail with the prefix cut to its
    first lines.)"""
    count = counter(zen)
    form = PromptFormat.from_tokenizer(zen)
    parts = PromptParts(CODE + "def last(", "):\n" + CODE, path="a.py")
    budget = Budget(tokens=600, prefix=0.5, suffix=0.2)
    prompt = form.build(parts, budget, count)
    text = prompt.text
    prefix = text[text.index("<|fim_prefix|>") + 14 : text.index("<|fim_suffix|>")]
    suffix = text[text.index("<|fim_suffix|>") + 14 : text.index("<|fim_middle|>")]
    assert prompt.prompt_tokens == len(prompt.ids(zen.tokenizer)) <= 600
    assert prefix.endswith("def last(") and (CODE + "def last(").endswith(prefix)
    assert prefix.lstrip("\n").startswith("def function_") and suffix.endswith("\n")
    assert ("):\n" + CODE).startswith(suffix)
    assert prompt.prompt_tokens > 600 - 2 * max(count(line) for line in CODE.splitlines())
    assert count(suffix) > 0.2 * 600  # it took what the context did not


def test_context_stays_within_its_share_and_best_snippets_go_first(zen):
    count = counter(zen)
    form = PromptFormat.from_tokenizer(zen)
    snippets = [Snippet(f"m{i}.py", CODE[i * 300 : i * 300 + 300], float(i)) for i in range(20)]
    parts = PromptParts(CODE, CODE, path="a.py", snippets=snippets)
    budget = Budget(tokens=1000, prefix=0.4, suffix=0.2)
    prompt = form.build(parts, budget, count)
    assert prompt.snippets and len(prompt.snippets) < 20
    assert [s.score for s in prompt.snippets] == sorted(
        (s.score for s in prompt.snippets), reverse=True
    )
    assert prompt.snippets[0].score == 19.0
    used = sum(count(s.text) for s in prompt.snippets)
    assert used <= 0.4 * 1000
    assert prompt.prompt_tokens <= 1000


def test_bad_budgets_and_families_are_one_line_errors(zen):
    with pytest.raises(ZenCoderError, match="add up to at most 1"):
        Budget(prefix=0.9, suffix=0.3)
    with pytest.raises(ZenCoderError, match=r"unknown model family .gpt-7.*Qwen2\.5-Coder"):
        PromptFormat.from_family("gpt-7")
    form = PromptFormat.from_tokenizer(zen)
    with pytest.raises(ZenCoderError, match="raise the budget"):
        form.build(PromptParts("x", "", path="a.py"), Budget(tokens=3), counter(zen))


def test_languages_are_named_as_mining_names_them():
    assert canonical_language("typescriptreact") == "TypeScript"
    assert canonical_language("PYTHON") == "Python"
    assert canonical_language(None, "src/main.rs") == "Rust"
    assert canonical_language("klingon", "notes.txt") is None


def test_a_base_with_fim_markers_but_no_repository_markers_gets_plain_fim(tmp_path):
    """CodeGemma spells its markers as Qwen does but has no <|repo_name|>: no repository
    layout with tokens it lacks. (Checked to fail when the FIM markers alone pick the family.)"""
    folder = tmp_path / "codegemma"
    folder.mkdir()
    special = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    bases._byte_level(special).save(str(folder / "tokenizer.json"))
    roles = read_tokenizer(folder / "tokenizer.json")
    form = PromptFormat.from_tokenizer(roles)
    parts = PromptParts("a", "b", path="x.py", repo="r", snippets=[Snippet("y.py", "Y\n")])
    assert (form.layout, form.name) == ("psm", "Qwen2.5-Coder")
    assert form.build(parts, Budget(), counter(roles)).text == (
        "<|fim_prefix|># Path: y.py\n# Y\na<|fim_suffix|>b<|fim_middle|>"
    )


def test_a_base_without_fim_continues_the_prefix(tmp_path):
    roles = read_tokenizer(bases.plain(tmp_path / "plain").path)
    form = PromptFormat.from_tokenizer(roles)
    parts = PromptParts("def f():\n", "    pass\n", path="x.py", snippets=[Snippet("y.py", "Y\n")])
    assert form.layout == "plain"
    assert form.build(parts, Budget(), counter(roles)).text == "# Path: y.py\n# Y\ndef f():\n"
