"""Prompt-lookup drafts copy what followed the latest earlier occurrence of the text's ending,
and verification keeps drafts up to the model's first disagreement."""

from zen_coder.inference.speculation import PromptLookup, accepted


def test_drafts_continue_the_latest_earlier_occurrence_of_the_longest_tail():
    # "1 2 3" occurs twice before the end; the latest one was followed by 7 8.
    lookup = PromptLookup([1, 2, 3, 4, 5, 1, 2, 3, 7, 8, 9, 2, 3], ngram=3)
    assert lookup.draft(2) == [7, 8]
    # The tail n-gram "9 2 3" never occurred; "2 3" did, latest followed by 7.
    assert lookup.draft(5) == [7, 8, 9, 2, 3]


def test_longer_matches_win_over_more_recent_shorter_ones():
    lookup = PromptLookup([5, 6, 7, 1, 6, 9, 5, 6], ngram=2)
    assert lookup.draft(1) == [7]  # "5 6" -> 7, though "6" alone last led to 9


def test_tokens_added_later_are_found():
    lookup = PromptLookup([1, 2], ngram=3)
    assert lookup.draft(3) == []
    lookup.extend([3, 1, 2])
    assert lookup.draft(3) == [3, 1, 2]
    assert lookup.draft(0) == []


def test_accepted_counts_until_the_first_disagreement():
    assert accepted([4, 5, 6], [4, 5, 9, 1]) == 2
    assert accepted([4, 5], [4, 5, 7]) == 2
    assert accepted([4], [3, 1]) == 0
    assert accepted([], [3]) == 0
