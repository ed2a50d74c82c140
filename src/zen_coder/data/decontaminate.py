"""Find training samples that contain a benchmark problem, so they can be removed before training.

A model evaluated on a benchmark must not have trained on its problems. As StarCoder's pipeline
did, a sample counts as contaminated when it shares a long run of words with a problem's prompt,
reference solution or tests: here any run of `n` = 13 words (GPT-3's choice, long enough that a
shared run is a copy rather than a coincidence). An exact copy of a part contains its runs, so
exact substrings are found too.

Words are maximal runs of non-whitespace bytes of the UTF-8 text, so a copy that was re-indented,
re-wrapped or had its line endings changed still matches. (Only ASCII whitespace separates words;
Unicode spaces such as U+00A0 are rare in code and stay inside words.)

Which runs are indexed, and why:

* A part shorter than `n` words (many HumanEval solutions are one `return` line, many MBPP test
  lists three asserts without spaces) would yield no run of `n` words, so it is indexed as its
  whole run of words: a sample contains it when it contains that exact run of words. Parts shorter
  than `MIN_SHORT_WORDS` are skipped: `return x + y` (HumanEval/53) is in dozens of standard
  library files, and writing it is not learning the problem.
* Runs without a letter are skipped: numbers and punctuation alone (`0, 0, 0, ...`, the primes,
  `1, 2, 3, ...`) are test data found in any code base, and a copy of a problem always has runs
  with letters too.
* Boilerplate is not a problem: MultiPL-E starts every Java prompt with the same imports and every
  C++ test with the same `#include`s, and every HumanEval test with the same `METADATA` block. A
  run shared by more than `MAX_SHARED_PROBLEMS` different problems is dropped. Translations of one
  problem count as one problem (HumanEval/0 with its MultiPL-E translations; MBPP task 11 with its
  sanitized version and translations), so a problem's wording shared across languages is kept.

Hashes are a fixed function of the text, equal in every process, platform and NumPy release: each
byte value gets a 64-bit constant (SplitMix64 of the byte), a word hashes to the polynomial
`sum(constant[byte_i] * BASE**i) mod 2**64` of its bytes, mixed by MurmurHash3's 64-bit
finalizer, and a run of words to the same polynomial of its word hashes. Prefix sums make every
word's and every run's polynomial two vectorized NumPy operations, whose uint64 wraparound is the
`mod 2**64`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zen_coder.benchmark_problems import Problem
from zen_coder.files import write_atomic

# A run of words shared by more problems (counting translations as one) is boilerplate.
MAX_SHARED_PROBLEMS = 5
CACHE_VERSION = 1  # bump when the hashing or the indexing rules change
# Problem parts with fewer words are too generic to index (see the module docstring).
MIN_SHORT_WORDS = 5

_MASK64 = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)


def _splitmix64(x: int) -> int:
    """SplitMix64's output for state `x`: a fixed, well-mixed 64-bit constant per byte value."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


_BYTE_CONSTANTS = np.array([_splitmix64(byte) for byte in range(256)], dtype=np.uint64)
_FMIX_MULTIPLIERS = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_FMIX_SHIFT = np.uint64(33)

# BASE**i and BASE**-i for every i up to the longest text seen (16 bytes per byte of it), grown on
# demand: computing them for each text would add a fifth to the time of `match`.
_powers = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers_for(length: int) -> tuple[np.ndarray, np.ndarray]:
    """`BASE**i` and `BASE**-i` modulo 2**64 for every `i < length` (and possibly more)."""
    global _powers
    if _powers[0].size < length:
        size = 1 << (length - 1).bit_length()
        _powers = tuple(
            np.cumprod(np.r_[1, np.full(size - 1, factor, dtype=np.uint64)], dtype=np.uint64)
            for factor in (_BASE, _BASE_INVERSE)
        )
    return _powers


def _prefix_polynomials(values: np.ndarray) -> np.ndarray:
    """`sums[i] = sum(values[k] * BASE**k for k < i)`, from which any window's polynomial
    `sum(values[k] * BASE**(k - start) for k in range(start, end))` is
    `(sums[end] - sums[start]) * BASE**-start`: two operations, wherever the window lies."""
    sums = np.zeros(values.size + 1, dtype=np.uint64)
    np.cumsum(values * _powers_for(values.size)[0][: values.size], out=sums[1:])
    return sums


def _runs(sums: np.ndarray, length: int) -> np.ndarray:
    """The polynomial of every window of `length` values, from their `_prefix_polynomials`."""
    count = max(sums.size - length, 0)
    return (sums[length : length + count] - sums[:count]) * _powers_for(count)[1][:count]


def _utf8(text: str) -> np.ndarray:
    """The UTF-8 bytes of `text` (lone surrogates encoded too, rather than failing on them)."""
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _word_bounds(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The start and end offsets of each maximal run of non-whitespace bytes."""
    is_space = np.ones(data.size + 2, dtype=bool)  # padded so that every word has both edges
    # Space, or one of \t \n \v \f \r (bytes 9 to 13; smaller bytes wrap around to above 13).
    is_space[1:-1] = (data == ord(" ")) | (data - np.uint8(ord("\t")) <= ord("\r") - ord("\t"))
    edges = np.flatnonzero(is_space[1:] != is_space[:-1])
    return edges[0::2], edges[1::2]


def _hash_words(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The hash of each word `data[start:end]`."""
    sums = _prefix_polynomials(_BYTE_CONSTANTS.take(data))
    hashes = (sums[ends] - sums[starts]) * _powers_for(data.size)[1][starts]
    # MurmurHash3's finalizer, so that a run's polynomial of words is not one of bytes.
    for multiplier in _FMIX_MULTIPLIERS:
        hashes ^= hashes >> _FMIX_SHIFT
        hashes *= multiplier
    hashes ^= hashes >> _FMIX_SHIFT
    return hashes


def word_hashes(text: str) -> np.ndarray:
    """The 64-bit hash of each whitespace-separated word of `text`, in order."""
    data = _utf8(text)
    return _hash_words(data, *_word_bounds(data))


def run_hashes(words: np.ndarray, length: int) -> np.ndarray:
    """The hash of every run of `length` consecutive words, from `word_hashes`, in order."""
    return _runs(_prefix_polynomials(words), length)


def _counts_before(flags: np.ndarray) -> np.ndarray:
    """`counts[i]`: how many of `flags[:i]` are set, so any window's count is one subtraction."""
    counts = np.zeros(flags.size + 1, dtype=np.int64)
    np.cumsum(flags, out=counts[1:])
    return counts


def _indexed_runs(part: str, n: int) -> tuple[int, np.ndarray]:
    """The run length and the distinct run hashes that one problem part adds to an index."""
    data = _utf8(part)
    starts, ends = _word_bounds(data)
    if starts.size < min(n, MIN_SHORT_WORDS):
        return 0, np.empty(0, dtype=np.uint64)
    length = min(n, starts.size)
    runs = run_hashes(_hash_words(data, starts, ends), length)
    # ASCII letters (either case) or any byte of a non-ASCII character.
    is_letter = ((data | np.uint8(0x20)) - np.uint8(ord("a")) < 26) | (data >= 0x80)
    letters = _counts_before(is_letter)
    lettered_words = _counts_before(letters[ends] > letters[starts])
    lettered_runs = lettered_words[length:] > lettered_words[: runs.size]
    return length, np.unique(runs[lettered_runs])


# HumanEval/0, HumanEval_0_has_close_elements -> humaneval/0; mbpp_2_similar_elements -> mbpp/2.
_TRANSLATED_ID = re.compile(r"(HumanEval|mbpp)[/_](\d+)", re.IGNORECASE)


def _original_problem(problem: Problem) -> str:
    """The problem that `problem` is or translates, so translations count as one problem."""
    if match := _TRANSLATED_ID.match(problem.task_id):
        return f"{match[1].lower()}/{int(match[2])}"
    if problem.benchmark.startswith("mbpp") and problem.task_id.isdigit():
        return f"mbpp/{int(problem.task_id)}"
    return f"{problem.benchmark}/{problem.task_id}"


def _shared_by_at_most(keys: np.ndarray, groups: np.ndarray, limit: int) -> np.ndarray:
    """A mask of the `keys` that occur together with at most `limit` distinct `groups`."""
    order = np.lexsort((groups, keys))
    key, group = keys[order], groups[order]
    new_key = np.ones(key.size, dtype=bool)
    new_key[1:] = key[1:] != key[:-1]
    new_pair = new_key.copy()
    new_pair[1:] |= group[1:] != group[:-1]
    key_starts = np.flatnonzero(new_key)
    groups_per_key = np.add.reduceat(new_pair.astype(np.int64), key_starts)
    keep = np.empty(keys.size, dtype=bool)
    keep[order] = np.repeat(groups_per_key <= limit, np.diff(np.r_[key_starts, key.size]))
    return keep


def _presence_table(keys: np.ndarray) -> tuple[np.uint64, np.ndarray]:
    """A flag for each value of the top bits of a hash, set where some of `keys` has those bits.

    With at least 16 flags per key, one lookup rules out 15 in 16 of the hashes that are not keys,
    whose binary search would miss the cache at every step. The few runs of each short length get
    a table of their own of at least 2**16 flags: it stays in cache and rules out almost all.
    """
    bits = max(16, (16 * keys.size).bit_length())
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[keys >> shift] = True
    return shift, table


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    """`np.unique` of an already sorted array, without sorting or hashing it again."""
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


class BenchmarkIndex:
    """The runs of words of a set of benchmark problems, to test training samples against.

    The index is a sorted uint64 array of run hashes with a parallel array of the problems (their
    positions in the list given to `build`) that contain each run; a run shared by several
    problems appears once per problem. A sample's runs are looked up by binary search, after a
    presence table has ruled out most of them at the cost of one memory access each.
    """

    def __init__(
        self,
        problems: tuple[Problem, ...],
        keys: np.ndarray,
        owners: np.ndarray,
        lengths: np.ndarray,
    ) -> None:
        """`keys` sorted, `owners[i]` the position in `problems` and `lengths[i]` the number of
        words of the run hashed to `keys[i]`."""
        self._problems = problems
        self._keys = keys
        self._owners = owners
        self._lengths = lengths
        self._distinct = int(np.count_nonzero(keys[1:] != keys[:-1])) + int(keys.size > 0)
        self._present = {
            int(length): _presence_table(_distinct_sorted(keys[lengths == length]))
            for length in np.unique(lengths)
        }

    @classmethod
    def build(cls, problems: Sequence[Problem], n: int = 13) -> BenchmarkIndex:
        """Index the runs of `n` words of each problem's prompt, solution and tests.

        Which runs are left out (short parts, runs without letters, boilerplate) is described in
        the module docstring.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        originals: dict[str, int] = {}
        runs, part_owners, part_groups, part_lengths = [], [], [], []
        for position, problem in enumerate(problems):
            group = originals.setdefault(_original_problem(problem), len(originals))
            for part in (problem.prompt, problem.solution, problem.tests):
                length, part_runs = _indexed_runs(part, n)
                runs.append(part_runs)
                part_owners.append(position)
                part_groups.append(group)
                part_lengths.append(length)
        key = np.concatenate([np.empty(0, dtype=np.uint64), *runs])
        sizes = [part_runs.size for part_runs in runs]
        owner, group, length = (
            np.repeat(np.array(values, dtype=np.int32), sizes)
            for values in (part_owners, part_groups, part_lengths)
        )
        keep = _shared_by_at_most(key, group, MAX_SHARED_PROBLEMS)
        key, owner, length = key[keep], owner[keep], length[keep]
        order = np.lexsort((owner, key))
        key, owner, length = key[order], owner[order], length[order]
        # A problem can repeat a run in several parts: keep one pair of run and problem.
        first = np.ones(key.size, dtype=bool)
        first[1:] = (key[1:] != key[:-1]) | (owner[1:] != owner[:-1])
        return cls(tuple(problems), key[first], owner[first], length[first])

    @classmethod
    def cached(cls, problems: Sequence[Problem], n: int, directory: Path) -> BenchmarkIndex:
        """`build`, or its result saved in `directory` by an earlier run on the same problems.

        Building takes seconds for all of MultiPL-E; loading the saved arrays, milliseconds.
        """
        digest = hashlib.blake2b(f"{CACHE_VERSION}:{n}:{MAX_SHARED_PROBLEMS}".encode())
        for problem in problems:
            for value in (problem.benchmark, problem.task_id, problem.prompt, problem.solution):
                digest.update(value.encode() + b"\0")
            digest.update(problem.tests.encode() + b"\1")
        path = directory / f"{digest.hexdigest()[:32]}.npz"
        try:
            with np.load(path) as saved:
                return cls(tuple(problems), saved["keys"], saved["owners"], saved["lengths"])
        except (OSError, ValueError, KeyError):
            index = cls.build(problems, n)
        arrays = {"keys": index._keys, "owners": index._owners, "lengths": index._lengths}
        write_atomic(path, lambda temporary: _save_arrays(temporary, arrays))
        return index

    def __len__(self) -> int:
        """The number of distinct runs of words in the index."""
        return self._distinct

    def match(self, text: str) -> Problem | None:
        """The problem that `text` shares the most indexed runs of words with, or None.

        Counting shared runs, rather than taking the first one found, names the problem that was
        copied when its wording also occurs in a translation. Ties go to the problem that came
        first in the list given to `build`.
        """
        sums = _prefix_polynomials(word_hashes(text))
        candidates = [np.empty(0, dtype=np.uint64)]
        for length, (shift, present) in self._present.items():
            runs = _runs(sums, length)
            candidates.append(runs[present.take(runs >> shift)])
        candidate = np.concatenate(candidates)
        slots = np.searchsorted(self._keys, candidate)
        shared = np.unique(candidate[self._keys.take(slots, mode="clip") == candidate])
        if not shared.size:
            return None
        firsts = np.searchsorted(self._keys, shared, side="left")
        lasts = np.searchsorted(self._keys, shared, side="right")
        owners = np.concatenate([self._owners[a:b] for a, b in zip(firsts, lasts, strict=True)])
        return self._problems[int(np.bincount(owners).argmax())]


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a handle: given a name, numpy would append ".npz"
        np.savez(handle, **arrays)
