"""The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language Models Trained
on Code", section 2.1.

Drawing k of a problem's n samples without replacement, pass@k is the chance that at least one of
the k is correct: 1 - C(n-c, k) / C(n, k) for c correct samples. The binomials overflow for large
n, so the ratio is computed as the product prod_{i=n-c+1..n} (1 - k/i). The benchmark score is the
mean over problems, reported only when every problem has at least k samples (fewer would bias it).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples, drawn from n of which c are correct, is."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """The mean pass@k over problems given as (samples, correct) pairs; None when any problem has
    fewer than k samples or there is none."""
    counts = list(counts)
    if not counts or any(n < k for n, _ in counts):
        return None
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
