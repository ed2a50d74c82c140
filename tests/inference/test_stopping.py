"""Stop sequences and line rules cut a streamed completion where an editor wants it to end, and
streaming never shows text that a later rule takes back."""

from __future__ import annotations

import random

import pytest

from zen_coder.errors import ZenCoderError
from zen_coder.inference.stopping import CutOff, TextCutter, block_indent


def cut(text: str, cutoff: CutOff, prefix: str = "") -> tuple[str, str | None]:
    """The whole completion through a cutter in one piece."""
    cutter = TextCutter(cutoff, prefix)
    shown = cutter.push(text) + cutter.flush()
    return shown, cutter.reason


def streamed(text: str, cutoff: CutOff, prefix: str, seed: int) -> tuple[str, list[str]]:
    """The completion pushed in random pieces; what was shown after each push."""
    rng = random.Random(seed)
    cutter = TextCutter(cutoff, prefix)
    shown, history = "", []
    index = 0
    while index < len(text):
        size = rng.randint(1, 4)
        shown += cutter.push(text[index : index + size])
        history.append(shown)
        index += size
    shown += cutter.flush()
    return shown, history


def test_stop_sequence_ends_before_it():
    assert cut("x = 1\ndef g():\n", CutOff(stop=("\ndef",), multiline="multi")) == (
        "x = 1",
        "stop",
    )


def test_text_that_might_start_a_stop_sequence_is_held_back():
    cutter = TextCutter(CutOff(stop=("<|end|>",), multiline="multi"))
    assert cutter.push("abc<|en") == "abc"
    assert cutter.push("x") == "<|enx"  # it was not the stop sequence after all
    assert cutter.push("<|end|>tail") == ""
    assert cutter.done and cutter.reason == "stop"


def test_single_line_ends_at_the_first_break_after_text():
    single = CutOff(multiline="single")
    assert cut("foo(a)\nbar()\n", single) == ("foo(a)", "stop")
    # A completion that starts on the next line keeps that line.
    assert cut("\n    return 1\n    x", single) == ("\n    return 1", "stop")
    assert cut("foo(a)", single) == ("foo(a)", None)


def test_auto_is_single_line_when_text_follows_the_cursor():
    cutoff = CutOff(suffix=")\nprint(x)\n")
    assert cut("a, b\nc = 2", cutoff, prefix="f(") == ("a, b", "stop")


def test_auto_ends_at_a_line_indented_less_than_the_block():
    prefix = "def f(x):\n    if x:\n        "
    completion = "return 1\n\n    return 2\n"
    assert cut(completion, CutOff(), prefix) == ("return 1", "stop")


def test_after_a_block_opener_the_next_definition_ends_it():
    prefix = "def f(x):"
    completion = "\n    y = x + 1\n    return y\n\ndef g():\n    pass\n"
    assert block_indent(prefix) == 1
    assert cut(completion, CutOff(), prefix) == ("\n    y = x + 1\n    return y", "stop")


def test_explicit_indent_with_multi():
    completion = "a\n  b\n c\n"
    assert cut(completion, CutOff(multiline="multi", indent=2)) == ("a\n  b", "stop")
    assert cut(completion, CutOff(multiline="multi")) == (completion, None)


def test_a_line_repeating_the_suffix_ends_it():
    cutoff = CutOff(suffix="\n\n    return total\n")
    completion = "\n    total += x\n    return total\n"
    assert cut(completion, cutoff, prefix="def f(x):\n    total = 0") == (
        "\n    total += x",
        "stop",
    )


def test_the_last_line_counts_as_complete_at_the_end():
    assert cut("a\nb", CutOff(multiline="multi", indent=1)) == ("a", "stop")


@pytest.mark.parametrize(
    ("text", "cutoff", "prefix"),
    [
        ("x = 1\ndef g():\n", CutOff(stop=("\ndef",), multiline="multi"), ""),
        ("\n    y = 1\n\n    z = 2\n\ndef g():\n", CutOff(), "def f():"),
        ("\n    total += x\n    return total\n", CutOff(suffix="\n    return total"), "    x"),
        ("abc<|enx<|end|>tail", CutOff(stop=("<|end|>", "<|x|>"), multiline="multi"), ""),
        ("first line\n  second\n", CutOff(multiline="single"), ""),
    ],
)
def test_streaming_in_pieces_shows_what_one_piece_does_and_never_takes_back(text, cutoff, prefix):
    """Checked by hand to fail: with `_lines_safe` returning len(text), the blank lines and the
    break before `def g()` are shown and then cut, so `final` differs from `whole`."""
    whole, _ = cut(text, cutoff, prefix)
    for seed in range(20):
        final, history = streamed(text, cutoff, prefix, seed)
        assert final == whole
        assert all(whole.startswith(shown) for shown in history)


def test_unknown_multiline_mode_is_a_one_line_error():
    with pytest.raises(ZenCoderError, match="multiline 'lines'"):
        CutOff(multiline="lines")
