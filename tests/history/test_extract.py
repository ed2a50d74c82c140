"""Normalization of kept code."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zen_coder.history.extract import normalize


def test_normalize_examples():
    assert normalize("a\r\nb\r\n") == "a\nb\n"
    assert normalize("a\rb") == "a\nb\n"
    assert normalize("x = 1   \ny = 2\t\n") == "x = 1\ny = 2\n"
    assert normalize("end\n\n\n") == "end\n"
    assert normalize("no newline") == "no newline\n"
    assert normalize("\ufeffbom\n") == "bom\n"
    assert normalize("") == ""
    assert normalize(" \n\t\n") == ""
    assert normalize("    indented\n") == "    indented\n"


@given(st.text(alphabet=st.sampled_from(["a", " ", "\t", "\n", "\r", "é", "\ufeff"])))
def test_normalize_properties(text):
    result = normalize(text)
    assert normalize(result) == result
    assert "\r" not in result
    assert all(line == line.rstrip(" \t") for line in result.split("\n"))
    assert result == "" or (result.endswith("\n") and not result.endswith("\n\n"))
    # Only whitespace at line ends, line endings and leading BOMs may change.
    assert result.replace("\n", "") == "".join(
        line.rstrip(" \t")
        for line in text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    )
