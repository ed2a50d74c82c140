"""Where two versions of a text differ."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zen_coder.history.edits import (
    _common_prefix_length,
    _common_suffix_length,
    differing_lines,
    shared_ends,
)

_TEXT = st.text(alphabet=st.sampled_from(["a", "b", "\n", "é"]), max_size=30)


@settings(deadline=None)
@given(_TEXT, _TEXT)
def test_shared_ends_are_the_longest_that_do_not_overlap(old: str, new: str) -> None:
    start, end = shared_ends(old, new)
    assert start + end <= min(len(old), len(new))
    assert old[:start] == new[:start]
    assert old[len(old) - end :] == new[len(new) - end :]
    # Longest: one more character at either end would differ, or overlap.
    assert start == min(len(old), len(new)) or old[start] != new[start]
    room = min(len(old), len(new)) - start
    assert end == room or old[len(old) - end - 1] != new[len(new) - end - 1]


@settings(deadline=None)
@given(_TEXT, _TEXT, _TEXT)
def test_differing_lines_are_whole_lines_outside_which_the_texts_agree(
    shared: str, old: str, new: str
) -> None:
    old, new = shared + old + shared, shared + new + shared
    start, old_end, new_end = differing_lines(old, new)
    assert old[:start] == new[:start]
    assert old[old_end:] == new[new_end:]
    for text, end in ((old, old_end), (new, new_end)):
        assert start <= end
        assert start == 0 or text[start - 1] == "\n"
        assert end == len(text) or text[end - 1] == "\n"


@settings(deadline=None)
@given(st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=6), st.lists(st.integers(0, 5)))
def test_the_kept_last_answer_is_only_for_the_same_two_texts(pairs, order) -> None:
    # Asked in any order, again and again, each pair gets its own answer. Checked by hand:
    # keeping the answer for the same first text alone makes this fail.
    for index in [*order, *range(len(pairs))]:
        a, b = pairs[index % len(pairs)]
        expected = (_common_prefix_length(a, b), 0)
        expected = (expected[0], _common_suffix_length(a, b, min(len(a), len(b)) - expected[0]))
        assert shared_ends(a, b) == expected
        assert shared_ends(a, b) == expected
