"""Where two versions of a text differ: their shared beginning and end, found at memcmp speed.

Most changes touch a few lines of a file, so the checks that read whole texts (formatting-only
changes, secrets) can read the part that changed instead, where they prove that gives the same
answer.
"""

from __future__ import annotations


def shared_ends(old: str, new: str) -> tuple[int, int]:
    """How many leading and how many trailing characters the texts share; the two never overlap
    (together they are at most the shorter text's length).

    The last answer is kept: the checks of one change (formatting, secrets, normalization) ask
    about the same two texts in turn, and each answer costs two binary searches.
    """
    last_old, last_new, answer = _last_call
    if old is last_old and new is last_new:
        return answer
    start = _common_prefix_length(old, new)
    answer = (start, _common_suffix_length(old, new, min(len(old), len(new)) - start))
    _last_call[:] = (old, new, answer)
    return answer


# The texts of the last call to shared_ends, and its answer.
_last_call: list = [None, None, (0, 0)]


def differing_lines(old: str, new: str) -> tuple[int, int, int]:
    """(start, old_end, new_end): the texts are equal before `start` and after `old_end` and
    `new_end`, and each bound is the start of a line (just after a newline) or an end of the text,
    so the lines outside are whole lines of both texts."""
    same_start, same_end = shared_ends(old, new)
    start = old.rfind("\n", 0, same_start) + 1
    newline = old.find("\n", len(old) - same_end)  # the first newline of the shared end
    old_end = len(old) if newline < 0 else newline + 1
    return start, old_end, len(new) - (len(old) - old_end)


def _common_prefix_length(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share, by binary search over C-level comparisons."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a.startswith(b[low:middle], low):
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix_length(a: str, b: str, limit: int) -> int:
    """How many trailing characters, at most `limit`, `a` and `b` share."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a.endswith(b[len(b) - middle : len(b) - low], 0, len(a) - low):
            low = middle
        else:
            high = middle - 1
    return low
