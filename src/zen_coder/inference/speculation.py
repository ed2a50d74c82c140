"""Prompt-lookup drafts: guess the next tokens by finding the latest earlier place where the
text ended the way it ends now, and copying what followed.

An edit copies from its input (a renamed variable, a repeated pattern, the suffix's next line),
so a few tokens are often right; the model checks all of them in one forward pass and keeps the
longest correct run. The index is updated per token, so drafting costs a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Iterable


class PromptLookup:
    """The tokens of one request (prompt, then completion) and, for each n-gram length 1..ngram,
    where the latest occurrence of each n-gram was followed."""

    def __init__(self, tokens: Iterable[int], ngram: int) -> None:
        self.ngram = ngram
        self.tokens: list[int] = []
        # n -> n-gram -> index of the token that followed its latest occurrence
        self.following: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(1, ngram + 1)}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            index = len(self.tokens)
            for n in range(1, min(self.ngram, index) + 1):
                self.following[n][tuple(self.tokens[index - n : index])] = index
            self.tokens.append(token)

    def draft(self, count: int) -> list[int]:
        """Up to `count` tokens that followed the longest n-gram ending the tokens, at its latest
        earlier occurrence; none when no tail n-gram occurred before."""
        if count <= 0:
            return []
        for n in range(min(self.ngram, len(self.tokens)), 0, -1):
            start = self.following[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + count]
        return []


def accepted(drafted: list[int], predicted: list[int]) -> int:
    """How many drafted tokens the model agrees with: `predicted[i]` is its own choice after the
    verified token and drafted[:i], so drafts count until the first disagreement."""
    count = 0
    for draft, choice in zip(drafted, predicted, strict=False):
        if draft != choice:
            break
        count += 1
    return count
