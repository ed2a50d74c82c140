"""MinHash signatures and LSH band hashes for near-duplicate detection of file changes.

The miner drops a change whose text (the added and removed lines of a diff) is a near-duplicate of
one it has already kept, as The Stack did: Jaccard similarity of the sets of 5-grams of tokens,
estimated with 256 MinHash permutations and found with locality-sensitive hashing.

Band hashes are written to disk and compared across runs, processes and machines, so every hash
here is a fixed function of the text and the seed: tokens are hashed with CRC-32 of their UTF-8
bytes (never Python's salted `hash()`), and all random parameters come from the PCG64 bit
generator's raw stream, which NumPy keeps stable across releases (unlike `Generator` methods).

Shingles, permutations and bands use multiply-add-shift hashing (Dietzfelbinger; Thorup, "High
Speed Hashing for Integers and Strings"): `((a·x + b) mod 2**64) >> 32` with random 64-bit `a`, `b`
and 32-bit `x`, or its vector form `((b + Σ aᵢ·xᵢ) mod 2**64) >> 32`, both strongly universal. They
run as plain uint64 NumPy arithmetic, whose wraparound is the `mod 2**64`.
"""

from __future__ import annotations

import re
import string
import zlib

import numpy as np

# The permutation products are computed in blocks of about this many uint64 values (512 KiB) in one
# reused buffer: a block stays in cache, memory stays bounded for long texts, and no large array is
# allocated per block (fresh multi-MiB allocations measured up to 3x slower).
_BLOCK_VALUES = 1 << 16

_SHIFT = np.uint64(32)
_HIGH_HALF = np.uint64(0xFFFF_FFFF_0000_0000)
_UINT64_MASK = (1 << 64) - 1

# A token is a maximal run of word characters (Unicode letters, digits and underscore).
_WORD = re.compile(r"\w+")
# For ASCII text, the same tokens come ~5x faster from bytes: map every non-word byte to a space and
# split on whitespace. Most diffs are ASCII, and tokenizing is a large share of the total time.
_WORD_BYTES = frozenset((string.ascii_letters + string.digits + "_").encode())
_NON_WORD_TO_SPACE = bytes(byte if byte in _WORD_BYTES else ord(" ") for byte in range(256))


def optimal_bands(threshold: float, permutations: int) -> tuple[int, int]:
    """Return the LSH `(bands, rows)` that best separates pairs above `threshold` from those below.

    Two texts of Jaccard similarity `s` share at least one band with probability
    `1 - (1 - s**rows)**bands`. The choice minimises the area of false positives (that probability
    integrated over `s` below the threshold) plus the area of false negatives (its complement above
    it), over all `bands * rows <= permutations`: the standard choice, and the one datasketch makes.
    The integrands are polynomials of degree `bands * rows <= permutations`, so Gauss-Legendre
    quadrature with `permutations // 2 + 1` nodes integrates them exactly.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, not {threshold}")
    if permutations < 1:
        raise ValueError(f"permutations must be positive, not {permutations}")
    candidates = [
        (b, r) for b in range(1, permutations + 1) for r in range(1, permutations // b + 1)
    ]
    bands, rows = np.array(candidates, dtype=np.float64).T[:, :, None]
    nodes, weights = np.polynomial.legendre.leggauss(permutations // 2 + 1)

    def miss_area(low: float, high: float) -> np.ndarray:
        """Integral over [low, high] of the probability that a pair shares no band."""
        s = low + (high - low) * (nodes + 1.0) / 2.0
        return (1.0 - s**rows) ** bands @ weights * (high - low) / 2.0

    false_positives = threshold - miss_area(0.0, threshold)
    false_negatives = miss_area(threshold, 1.0)
    # argmin keeps the first of equal candidates, in the same order as datasketch's search.
    return candidates[int(np.argmin(false_positives + false_negatives))]


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimate the Jaccard similarity of two texts from their signatures.

    Each permutation's minimum agrees with probability equal to the Jaccard similarity, so the
    fraction of agreeing positions is an unbiased estimate (standard error at most 0.031 for 256).
    """
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"signatures must be non-empty and of equal shape, not {a.shape}, {b.shape}"
        )
    return float(np.count_nonzero(a == b)) / a.size


def _tokens(text: str) -> list[bytes]:
    """The UTF-8 bytes of each token of `text`, in order."""
    if text.isascii():
        return text.encode("ascii").translate(_NON_WORD_TO_SPACE).split()
    return [token.encode() for token in _WORD.findall(text)]


def _unique(values: np.ndarray) -> np.ndarray:
    """The distinct values: a minimum ignores repeats, so each shingle is permuted only once.

    Sorting and masking is several times faster than `np.unique` on these small arrays.
    """
    ordered = np.sort(values)
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class MinHasher:
    """MinHash signatures and LSH band hashes of texts, with The Stack's settings by default.

    Instances with equal arguments produce equal hashes in any process, so their outputs can be
    stored and compared later. A hasher holds only read-only parameters and is safe to share
    between threads.
    """

    def __init__(
        self,
        permutations: int = 256,
        shingle_size: int = 5,
        threshold: float = 0.7,
        seed: int = 0x5EED,
    ) -> None:
        if shingle_size < 1:
            raise ValueError(f"shingle_size must be positive, not {shingle_size}")
        self.permutations = permutations
        self.shingle_size = shingle_size
        self.bands, self.rows = optimal_bands(threshold, permutations)

        random = np.random.PCG64(seed)

        def draw(*shape: int) -> np.ndarray:
            return random.random_raw(int(np.prod(shape))).astype(np.uint64).reshape(shape)

        # Permutation i maps a shingle hash x to (a[i]·x + b[i]) mod 2**64; an odd `a` makes that a
        # bijection, so distinct shingles never tie before the final shift.
        self._multipliers = draw(permutations, 1) | np.uint64(1)
        self._offsets = draw(permutations, 1)
        # A shingle's hash: vector multiply-add-shift of its token hashes (last key: the offset).
        self._shingle_keys = draw(shingle_size + 1)
        # A band's hash: two independent vector multiply-add-shift hashes of its rows, one for each
        # 32-bit half, so distinct bands collide with probability 2**-64. Keys differ per band, so
        # equal rows in different bands are no likelier to give equal hashes.
        self._band_keys = draw(2, self.bands, self.rows + 1)
        # A short text's bands: an affine map of its fallback with an odd multiplier per band, a
        # bijection, so texts with different fallbacks never share a band hash at the same index.
        self._fallback_multipliers = draw(self.bands) | np.uint64(1)
        self._fallback_offsets = draw(self.bands)

    def signature(self, text: str) -> np.ndarray | None:
        """Return the uint32[permutations] MinHash of the text's set of token shingles.

        Tokens are maximal runs of letters, digits and underscores, so whitespace and punctuation
        changes alone do not make texts differ. Returns None for a text with fewer tokens than
        `shingle_size`: it has no shingles, and so says nothing about near-duplication.
        """
        tokens = _tokens(text)
        if len(tokens) < self.shingle_size:
            return None
        token_hashes = np.fromiter(map(zlib.crc32, tokens), dtype=np.uint64, count=len(tokens))
        return self._min_hashes(_unique(self._shingle_hashes(token_hashes)))

    def band_hashes(self, text: str, fallback: int) -> np.ndarray:
        """Return uint64[bands] LSH band hashes: texts sharing one are near-duplicate candidates.

        Band hash i is meant to be compared with band hash i of other texts (one bucket table per
        band); as the hashes are salted per band, pooling all bands in one table works as well.

        A text too short for a signature gets bands derived from `fallback`, an integer content
        hash supplied by the caller (taken modulo 2**64): such a text collides only with texts of
        the same fallback, never with other short texts.
        """
        signature = self.signature(text)
        if signature is None:
            fallback_hash = np.uint64(fallback & _UINT64_MASK)
            return fallback_hash * self._fallback_multipliers + self._fallback_offsets
        rows = signature[: self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        keys = self._band_keys
        halves = (rows * keys[:, :, :-1]).sum(axis=2) + keys[:, :, -1]
        return (halves[0] & _HIGH_HALF) | (halves[1] >> _SHIFT)

    def _shingle_hashes(self, token_hashes: np.ndarray) -> np.ndarray:
        """32-bit hashes of every window of `shingle_size` consecutive tokens."""
        keys = self._shingle_keys
        count = token_hashes.size - self.shingle_size + 1
        combined = token_hashes[:count] * keys[0]
        for position in range(1, self.shingle_size):
            combined += token_hashes[position : position + count] * keys[position]
        combined += keys[-1]
        return combined >> _SHIFT

    def _min_hashes(self, shingles: np.ndarray) -> np.ndarray:
        """The minimum of every permutation over the shingle hashes, as uint32."""
        minima = np.empty(self.permutations, dtype=np.uint64)
        step = max(1, _BLOCK_VALUES // shingles.size)
        buffer = np.empty((min(step, self.permutations), shingles.size), dtype=np.uint64)
        for start in range(0, self.permutations, step):
            block = slice(start, start + step)
            permuted = buffer[: minima[block].size]
            np.multiply(self._multipliers[block], shingles, out=permuted)
            permuted += self._offsets[block]
            permuted.min(axis=1, out=minima[block])
        # Shifting is monotonic, so the minimum's top half is the minimum of the top halves.
        return (minima >> _SHIFT).astype(np.uint32)
