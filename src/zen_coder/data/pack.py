"""Tokenized samples packed into fixed-length sequences, written as memory-mappable arrays.

Layout of one split folder (read by zen_coder.data.loader):

    index.json      {"sequences": N, "context_length": L, "channels": {name: dtype}}
    tokens.bin      token ids                          } each a raw little-endian
    repo.bin        repository id (0 = unknown)        } C-order array of shape
    language.bin    language id (0 = unknown)          } (N, L)
    time.bin        temporal position (docs/prepare.md) }
    segment.bin     document number in the sequence, from 1; 0 = padding

Documents are concatenated; one that does not fit the rest of a sequence continues in the next,
as a new segment. A shuffle buffer mixes documents of different files and repositories.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zen_coder.data.samples import Sample
from zen_coder.data.tokenizer import RoleTokenizer
from zen_coder.files import write_bytes_atomic

CHANNELS = ("tokens", "repo", "language", "time", "segment")
TIME_MAX = np.iinfo(np.uint16).max


@dataclass
class Document:
    tokens: np.ndarray  # int64[n]
    time: np.ndarray  # int64[n]
    repo: int
    language: int


def tokenize(
    samples: Sequence[Sample],
    tokenizer: RoleTokenizer,
    repo_ids: dict[str, int],
    language_ids: dict[str, int],
) -> list[Document]:
    """Encode the samples' text parts in one batch and assemble documents with their channels.

    `encode_batch` runs in Rust threads without the GIL; special tokens go in by id, each role
    as the tokenizer's token for it. A document starts with the tokenizer's BOS where it has one
    (a base that saw one before every text in pretraining) and ends with its EOS. A text part
    with per-line times is encoded whole, as inference encodes it (cutting it at lines would
    change the tokens), and each token takes the time of the line where it starts.
    """
    texts = [value for sample in samples for special, value, _ in sample.parts if not special]
    encodings = iter(tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False))
    role_ids = tokenizer.ids
    documents = []
    for sample in samples:
        ids: list[int] = []
        times: list[int] = []
        lengths: list[int] = []
        per_line: list[tuple[int, np.ndarray]] = []  # (first token, times) of per-line parts
        if tokenizer.bos_id is not None:
            ids.append(tokenizer.bos_id)
            times.append(sample.parts[0][2])
            lengths.append(1)
        for special, value, time in sample.parts:
            if special:
                piece = [role_ids[value]]
            else:
                encoding = next(encodings)
                piece = encoding.ids
                if not isinstance(time, int):
                    per_line.append((len(ids), token_line_times(value, time, encoding.offsets)))
            ids.extend(piece)
            times.append(time if isinstance(time, int) else 0)
            lengths.append(len(piece))
        token_times = np.repeat(np.array(times, dtype=np.int64), lengths)
        for first, values in per_line:
            token_times[first : first + len(values)] = values
        # The EOS takes the time of the token before it.
        ids.append(tokenizer.eos_id)
        token_times = np.append(token_times, token_times[-1:])
        documents.append(
            Document(
                tokens=np.array(ids, dtype=np.int64),
                time=token_times,
                repo=repo_ids.get(sample.repo, 0),
                language=language_ids.get(sample.language or "", 0),
            )
        )
    return documents


def token_line_times(
    text: str, line_times: Sequence[int], offsets: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Each token's time: that of the line of `text` holding its first character (a token that
    starts at a newline belongs to the line the newline ends). `offsets` are the tokenizer's
    character offsets."""
    starts = np.fromiter((start for start, _ in offsets), dtype=np.int64, count=len(offsets))
    data = text.encode("utf-8")
    if len(data) == len(text):
        characters = np.frombuffer(data, dtype=np.uint8)
    else:
        characters = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    newlines = np.flatnonzero(characters == ord("\n"))
    lines = np.searchsorted(newlines, starts, side="left")
    return np.asarray(line_times, dtype=np.int64)[lines]


class SplitWriter:
    """Packs documents into sequences of `context_length` tokens and appends them to disk."""

    BLOCK = 256  # sequences buffered per write

    def __init__(
        self,
        folder: Path,
        context_length: int,
        dtypes: dict[str, str],
        pad_id: int,
        seed: int,
        shuffle_buffer: int = 4096,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.length = context_length
        self.dtypes = dtypes
        self.pad_id = pad_id
        self.rng = random.Random(seed)
        self.shuffle_buffer = shuffle_buffer
        self.pending: list[Document] = []
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in CHANNELS}  # noqa: SIM115
        self.block = {
            name: np.zeros((self.BLOCK, context_length), dtype=dtypes[name]) for name in CHANNELS
        }
        self.row = 0  # sequence being filled, within the block
        self.position = 0  # next free token in that sequence
        self.segment = 0
        self.sequences = 0

    def add(self, document: Document) -> None:
        """Queue a document; a random queued one is packed once the buffer is full."""
        self.pending.append(document)
        if len(self.pending) > self.shuffle_buffer:
            self._pack(self._take_random())

    def _take_random(self) -> Document:
        index = self.rng.randrange(len(self.pending))
        self.pending[index], self.pending[-1] = self.pending[-1], self.pending[index]
        return self.pending.pop()

    def _pack(self, document: Document) -> None:
        start = 0
        total = len(document.tokens)
        while start < total:
            take = min(total - start, self.length - self.position)
            self.segment += 1
            row, span = self.row, slice(self.position, self.position + take)
            self.block["tokens"][row, span] = document.tokens[start : start + take]
            self.block["time"][row, span] = np.minimum(
                document.time[start : start + take], TIME_MAX
            )
            self.block["repo"][row, span] = document.repo
            self.block["language"][row, span] = document.language
            self.block["segment"][row, span] = self.segment
            self.position += take
            start += take
            if self.position == self.length:
                self._next_sequence()

    def _next_sequence(self) -> None:
        self.row += 1
        self.sequences += 1
        self.position = 0
        self.segment = 0
        if self.row == self.BLOCK:
            self._write(self.BLOCK)

    def _write(self, rows: int) -> None:
        for name in CHANNELS:
            self.files[name].write(self.block[name][:rows].tobytes())
        self.row = 0

    def close(self) -> int:
        """Pack what is queued, pad the last sequence, write the index; the number of sequences."""
        while self.pending:
            self._pack(self._take_random())
        if self.position:
            row, rest = self.row, slice(self.position, self.length)
            self.block["tokens"][row, rest] = self.pad_id
            for name in ("repo", "language", "time", "segment"):
                self.block[name][row, rest] = 0
            self._next_sequence()
        self._write(self.row)
        for handle in self.files.values():
            handle.close()
        index = {
            "sequences": self.sequences,
            "context_length": self.length,
            "channels": self.dtypes,
        }
        write_bytes_atomic(
            self.folder / "index.json", (json.dumps(index, indent=1) + "\n").encode()
        )
        return self.sequences


def channel_dtypes(vocab_size: int, repositories: int, context_length: int) -> dict[str, str]:
    """The narrowest dtypes that hold every value (2 bytes a token up to 65,536 tokens)."""
    wide = "uint32"
    return {
        "tokens": "uint16" if vocab_size <= 1 << 16 else wide,
        "repo": "uint16" if repositories < 1 << 16 else wide,
        "language": "uint8",
        "time": "uint16",
        "segment": "uint16" if context_length < 1 << 16 else wide,
    }
