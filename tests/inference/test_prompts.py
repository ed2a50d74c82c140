"""Prompt formats: the layout each model was trained on, and packing into a token budget, with
real tokenizers (zen-coder's, and bases shaped like Qwen2.5-Coder, StarCoder2, Code Llama)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.data import bases
from tests.models import tokenizer_folder  # noqa: F401 - a fixture
from zen_coder.data.blame import LineTimes, line_count
from zen_coder.data.config import PrepareConfig
from zen_coder.data.pack import tokenize
from zen_coder.data.samples import RecordSamples
from zen_coder.data.tokenizer import RoleTokenizer, read_tokenizer, save_base_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.prompts import (
    STABLE_START_LINES,
    Ages,
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
    """Token for token what `prepare` packs for a suffix-first fill-in-the-middle sample of the
    same file, cut after <|fim_middle|>. (Checked to fail with the path and language headers
    swapped, and with prepare's prefix-first order.)"""
    config = PrepareConfig(fim_rate=1.0, fim_spm_rate=1.0)
    row = {"repo": "org/proj", "path": "pkg/shapes.py", "language": "Python", "commit": "c1"}
    row["history_position"] = 4
    sample = RecordSamples(config).file(row, CODE[:3000], "train")
    texts = [value for special, value, _ in sample.parts if not special]
    suffix, prefix = texts[3], texts[4]
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
        + "<|fim_suffix|>\n<|fim_prefix|>def f():\n    return <|fim_middle|>"
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
        == "<|repo_name|>r<|file_sep|>a.py<|lang|>Python<|fim_suffix|><|fim_prefix|>x<|fim_middle|>"
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
    suffix = text[text.index("<|fim_suffix|>") + 14 : text.index("<|fim_prefix|>")]
    prefix = text[text.index("<|fim_prefix|>") + 14 : text.index("<|fim_middle|>")]
    assert prompt.prompt_tokens == len(prompt.ids(zen.tokenizer)) <= 600
    assert prefix.endswith("def last(") and (CODE + "def last(").endswith(prefix)
    assert prefix.lstrip("\n").startswith("def function_") and suffix.endswith("\n")
    assert ("):\n" + CODE).startswith(suffix)
    # The prefix took what the context did not, up to the lines its stable start costs; the
    # suffix, which opens this layout's code, kept its share and no more.
    longest = max(count(line) for line in CODE.splitlines())
    assert prompt.prompt_tokens > 600 - (STABLE_START_LINES + 2) * longest
    assert count(prefix) > 0.5 * 600 and count(suffix) <= 0.2 * 600
    # A prefix-first layout gives the suffix its part of what is left too.
    text = PromptFormat.from_family("StarCoder").build(parts, budget, len).text
    assert len(text[text.index("<fim_suffix>") + 12 : text.index("<fim_middle>")]) > 0.2 * 600


def shared_start(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_typing_keeps_the_prompt_start_so_the_engine_can_reuse_it(zen):
    """Typing 40 lines at the end of a file too long for the budget, a prompt every third key:
    nine prompts in ten start with over 90% of the last one's tokens, and the start moves (most
    of the prompt new) about once every STABLE_START_LINES (8) lines, and now and then where a
    key changes how the tokens fit. (Checked to fail with the prefix cut on any line,
    STABLE_START_LINES = 1: the start then moved 53 times; and with the prefix before the
    suffix, whose fifth of the prompt was then new at every key.)"""
    count = counter(zen)
    form = PromptFormat.from_tokenizer(zen)
    typed = "".join(f"    total += item_{i}\n" for i in range(40))
    previous, reused = None, []
    for end in range(0, len(typed) + 1, 3):
        parts = PromptParts(CODE + typed[:end], "\n    return total\n\n" + CODE, path="a.py")
        ids = form.build(parts, Budget(tokens=400), count).ids(zen.tokenizer)
        if previous is not None:
            reused.append(shared_start(previous, ids) / len(ids))
        previous = ids
    moves = sum(share < 0.5 for share in reused)
    assert STABLE_START_LINES == 8 and moves <= 10
    assert sorted(reused)[len(reused) // 10] > 0.9  # nine prompts in ten reuse over 90%


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


def test_native_prompt_times_are_the_line_times_prepare_trains_with(zen):
    """With ages, each token's time is what `prepare` gives the same fill-in-the-middle sample's
    token (its line's time, by the tokenizer's offsets; the header's for headers and markers).
    The lines the cursor joins (the prefix's last, the suffix's first) share a time, since an
    editor's line holds both. Checked by hand to fail: with the suffix's lines taken from the
    line after the prefix's last (off by one)."""
    config = PrepareConfig(fim_rate=1.0, fim_spm_rate=1.0)
    row = {"repo": "org/proj", "path": "pkg/shapes.py", "language": "Python", "commit": "c1"}
    row["history_position"] = 40
    content = CODE[:3000]
    lines = line_count(content)
    first = RecordSamples(config).file(row, content, "train")
    texts = [value for special, value, _ in first.parts if not special]
    suffix, prefix = texts[3], texts[4]
    cursor, resumed = prefix.count("\n"), content.count("\n", 0, len(content) - len(suffix))
    times = tuple(7 if cursor <= line <= resumed else 1 + (line * 13) % 39 for line in range(lines))
    sample = RecordSamples(config).file(row, content, "train", LineTimes((), times))
    [document] = tokenize([sample], zen, {}, {})
    trained = document.tokens.tolist()
    middle = trained.index(zen.ids["<|fim_middle|>"]) + 1

    form = PromptFormat.from_tokenizer(zen)
    ages = Ages(times[: cursor + 1] + times[resumed + 1 :], header=40)
    parts = PromptParts(prefix, suffix, "pkg/shapes.py", "python", "org/proj", ages=ages)
    ids, prompt_times = form.build(parts, Budget(tokens=100_000), counter(zen)).ids_and_times(
        zen.tokenizer
    )
    start = [] if zen.bos_id is None else [zen.bos_id]
    assert start + ids == trained[:middle]
    assert prompt_times is not None and len(set(prompt_times)) > 3
    assert prompt_times[:1] * len(start) + prompt_times == document.time[:middle].tolist()


def test_a_prompt_cut_to_its_budget_keeps_each_lines_time(zen):
    """A cut prefix keeps its last lines' times, a cut suffix its first lines'; without ages
    there are none. (Checked to fail with the cut prefix's times from the file's first lines.)"""
    code = CODE[:4000]
    split = len(code) // 2
    times = tuple(range(1, line_count(code) + 1))
    form = PromptFormat.from_tokenizer(zen)
    parts = PromptParts(code[:split], code[split:], "a.py", ages=Ages(times, header=99))
    prompt = form.build(parts, Budget(tokens=300), counter(zen))
    ids, prompt_times = prompt.ids_and_times(zen.tokenizer)
    assert len(ids) == len(prompt_times)
    pieces = {value: time for (_, value), time in zip(prompt.pieces, prompt.times, strict=True)}
    cut_prefix = prompt.pieces[-2][1]
    cut_suffix = prompt.pieces[-4][1]
    assert code[:split].endswith(cut_prefix) and len(cut_prefix) < split
    prefix_end = line_count(code[:split])
    assert pieces[cut_prefix] == times[prefix_end - line_count(cut_prefix) : prefix_end]
    suffix_start = code[:split].count("\n")
    assert pieces[cut_suffix] == times[suffix_start : suffix_start + line_count(cut_suffix)]
    assert prompt_times[-1] == 99  # <|fim_middle|>, the header's time
    plain = replace(parts, ages=None)
    assert (
        form.build(plain, Budget(tokens=300), counter(zen)).ids_and_times(zen.tokenizer)[1] is None
    )
