"""MinHash signatures and LSH bands: exact where the design guarantees it, statistical elsewhere.

The statistical tests draw their texts from fixed seeds, so they are deterministic; their
tolerances are about three standard errors, so a correct implementation passes for any seed.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from zen_coder.history import minhash
from zen_coder.history.minhash import MinHasher, estimate_jaccard, optimal_bands

SEPARATORS = [" ", "\n", "(", ") ", ", ", ".", " = ", "->"]


@pytest.fixture(scope="module")
def hasher() -> MinHasher:
    return MinHasher()


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz_"
    return [f"{''.join(rng.choices(letters, k=rng.randint(2, 8)))}{i}" for i in range(size)]


def render(tokens: list[str], rng: random.Random) -> str:
    """Join tokens with assorted punctuation, which tokenization must see through."""
    return "".join(token + rng.choice(SEPARATORS) for token in tokens)


def exact_jaccard(a: str, b: str, shingle_size: int = 5) -> float:
    """Reference Jaccard similarity of the two texts' sets of token shingles."""

    def shingles(text: str) -> set[tuple[str, ...]]:
        tokens = re.findall(r"\w+", text)
        return {tuple(tokens[i : i + shingle_size]) for i in range(len(tokens) - shingle_size + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def edited_pairs(
    count: int, substitutions: range, seed: int, length: int = 200
) -> list[tuple[str, str]]:
    """Pairs of a random text and a copy with some tokens replaced by fresh ones.

    Each replaced token changes up to `shingle_size` shingles, so the number of substitutions
    sets the pair's Jaccard similarity.
    """
    rng = random.Random(seed)
    vocabulary = make_vocabulary(rng, 5000)
    pairs = []
    for pair in range(count):
        tokens = rng.choices(vocabulary, k=length)
        edited = list(tokens)
        for position in rng.sample(range(length), rng.choice(substitutions)):
            edited[position] = f"fresh{pair}x{position}"
        pairs.append((render(tokens, rng), render(edited, rng)))
    return pairs


def share_a_band(hasher: MinHasher, a: str, b: str) -> bool:
    return bool(np.any(hasher.band_hashes(a, 0) == hasher.band_hashes(b, 0)))


# optimal_bands


def test_optimal_bands_for_the_stack_settings() -> None:
    assert optimal_bands(0.7, 256) == (25, 10)
    assert optimal_bands(0.85, 256) == (13, 19)


@pytest.mark.parametrize("permutations", [64, 128, 256])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95])
def test_optimal_bands_matches_datasketch(threshold: float, permutations: int) -> None:
    datasketch = pytest.importorskip("datasketch")
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=permutations)
    assert optimal_bands(threshold, permutations) == (lsh.b, lsh.r)


@pytest.mark.parametrize(("threshold", "permutations"), [(0.0, 256), (1.0, 256), (0.7, 0)])
def test_optimal_bands_rejects_invalid_arguments(threshold: float, permutations: int) -> None:
    with pytest.raises(ValueError):
        optimal_bands(threshold, permutations)


# Shapes, types and determinism


def test_default_hasher_uses_the_stack_bands(hasher: MinHasher) -> None:
    assert (hasher.bands, hasher.rows) == (25, 10)


@pytest.mark.parametrize(("permutations", "threshold"), [(256, 0.7), (128, 0.5)])
def test_dtypes_and_shapes(permutations: int, threshold: float) -> None:
    hasher = MinHasher(permutations=permutations, threshold=threshold)
    long_text, short_text = "one two three four five six", "one two"

    signature = hasher.signature(long_text)
    assert signature is not None
    assert signature.dtype == np.uint32
    assert signature.shape == (permutations,)
    for text in (long_text, short_text):
        bands = hasher.band_hashes(text, fallback=1)
        assert bands.dtype == np.uint64
        assert bands.shape == (hasher.bands,)


def test_identical_texts_have_identical_hashes(hasher: MinHasher) -> None:
    text = render(make_vocabulary(random.Random(1), 300), random.Random(2))
    assert np.array_equal(hasher.signature(text), hasher.signature(text))
    assert np.array_equal(hasher.band_hashes(text, 0), hasher.band_hashes(text, 0))


def test_instances_with_the_same_seed_agree_and_other_seeds_differ() -> None:
    text = render(make_vocabulary(random.Random(3), 100), random.Random(4))
    first, second, other = MinHasher(), MinHasher(), MinHasher(seed=1)
    assert np.array_equal(first.signature(text), second.signature(text))
    assert np.array_equal(first.band_hashes(text, 5), second.band_hashes(text, 5))
    assert np.array_equal(first.band_hashes("short", 5), second.band_hashes("short", 5))
    assert not np.any(first.band_hashes(text, 5) == other.band_hashes(text, 5))


def test_hashes_are_pinned_across_processes_and_releases(hasher: MinHasher) -> None:
    """Band hashes are stored on disk; any change here invalidates every stored hash."""
    text = "def add(a, b):\n    return a + b\n"
    signature = hasher.signature(text)
    assert signature is not None
    assert signature[:4].tolist() == [73195513, 960871175, 639962102, 1129643994]
    assert hasher.band_hashes(text, 0)[:2].tolist() == [16488849248998471035, 1548445684988670203]
    assert hasher.band_hashes("x = 1", 42)[:2].tolist() == [
        12286634236338805592,
        2668442123456447163,
    ]


def test_blocking_does_not_change_the_signature(
    hasher: MinHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    text = render(rng.choices(make_vocabulary(rng, 5000), k=3000), rng)
    blocked = hasher.signature(text)
    monkeypatch.setattr(minhash, "_BLOCK_VALUES", 1 << 30)
    assert np.array_equal(blocked, hasher.signature(text))


# Tokenization


def test_only_tokens_matter_not_whitespace_or_punctuation(hasher: MinHasher) -> None:
    a = hasher.signature("result = compute(alpha, beta)->value")
    b = hasher.signature("result\n  compute alpha\tbeta value")
    assert np.array_equal(a, b)


def test_non_ascii_text_is_tokenized_like_ascii_text(hasher: MinHasher) -> None:
    ascii_text = "total = price * count - discount # done"
    unicode_text = "total \u2190 price \u00d7 count \u2014 discount \u00bb done"
    assert np.array_equal(hasher.signature(ascii_text), hasher.signature(unicode_text))


def test_unicode_letters_are_part_of_tokens(hasher: MinHasher) -> None:
    assert hasher.signature("naïve a b c") is None  # four tokens, not five
    assert hasher.signature("straße größe 名前 変数 値") is not None


# Short texts


def test_texts_shorter_than_a_shingle_have_no_signature(hasher: MinHasher) -> None:
    assert hasher.signature("") is None
    assert hasher.signature("a + b - c * d") is None
    assert hasher.signature("a + b - c * d / e") is not None


def test_short_texts_collide_only_through_equal_fallbacks(hasher: MinHasher) -> None:
    same = hasher.band_hashes("x = 1", fallback=7)
    assert np.array_equal(same, hasher.band_hashes("y = 2", fallback=7))
    assert not np.intersect1d(same, hasher.band_hashes("x = 1", fallback=8)).size

    long_text = render(make_vocabulary(random.Random(6), 50), random.Random(7))
    assert not np.intersect1d(same, hasher.band_hashes(long_text, fallback=7)).size


def test_distinct_fallbacks_never_share_a_band(hasher: MinHasher) -> None:
    fallbacks = [*range(500), *(2**63 + i for i in range(500))]
    bands = np.stack([hasher.band_hashes("pass", fallback) for fallback in fallbacks])
    for column in bands.T:
        assert np.unique(column).size == len(fallbacks)


def test_fallback_is_taken_modulo_2_to_the_64(hasher: MinHasher) -> None:
    assert np.array_equal(hasher.band_hashes("", -1), hasher.band_hashes("", 2**64 - 1))
    assert np.array_equal(hasher.band_hashes("", 2**80 + 3), hasher.band_hashes("", 3))


# Statistics


def test_estimate_jaccard_tracks_the_exact_similarity(hasher: MinHasher) -> None:
    """256 permutations give a standard error of at most 0.031: rarely 0.1 off, and no bias."""
    errors = np.array(
        [
            estimate_jaccard(hasher.signature(a), hasher.signature(b)) - exact_jaccard(a, b)
            for a, b in edited_pairs(150, range(0, 45), seed=8)
        ]
    )
    assert np.count_nonzero(np.abs(errors) > 0.1) <= 1
    assert np.abs(errors).max() <= 0.15
    assert np.abs(errors).mean() <= 0.03
    assert abs(errors.mean()) <= 0.01


def test_estimate_jaccard_of_identical_and_mismatched_signatures() -> None:
    signature = np.arange(8, dtype=np.uint32)
    assert estimate_jaccard(signature, signature.copy()) == 1.0
    assert estimate_jaccard(signature, signature[::-1].copy()) == 0.0
    with pytest.raises(ValueError):
        estimate_jaccard(signature, signature[:4])


def test_highly_similar_texts_share_a_band(hasher: MinHasher) -> None:
    pairs = edited_pairs(200, range(1, 3), seed=9)  # Jaccard about 0.9 to 0.95
    assert min(exact_jaccard(a, b) for a, b in pairs) >= 0.88
    assert sum(share_a_band(hasher, a, b) for a, b in pairs) >= 198


def test_band_collision_rate_follows_the_lsh_curve(hasher: MinHasher) -> None:
    """Near the threshold the collision probability is steep; the observed rate must follow it."""
    pairs = edited_pairs(400, range(4, 11), seed=10)  # Jaccard about 0.6 to 0.8
    similarities = np.array([exact_jaccard(a, b) for a, b in pairs])
    expected = np.mean(1 - (1 - similarities**hasher.rows) ** hasher.bands)
    observed = np.mean([share_a_band(hasher, a, b) for a, b in pairs])
    assert 0.2 < expected < 0.8  # the test exercises the slope, not a flat end
    assert observed == pytest.approx(expected, abs=0.1)


def test_unrelated_texts_do_not_share_a_band(hasher: MinHasher) -> None:
    rng = random.Random(11)
    vocabulary = make_vocabulary(rng, 300)
    texts = [render(rng.choices(vocabulary, k=rng.randint(20, 400)), rng) for _ in range(400)]
    pairs = list(zip(texts[::2], texts[1::2], strict=True))
    assert max(exact_jaccard(a, b) for a, b in pairs) < 0.1
    assert not any(share_a_band(hasher, a, b) for a, b in pairs)
