"""`zen-coder train` with the model's start measured, for test_finetune_parallel.py.

Under torchrun: `torchrun --nproc-per-node N -m tests.training.start_run STATS TRAIN-ARGUMENTS`.
While the trainer starts its model (`trainer._start_model`: built on the meta device,
parallelized, materialized, filled from the base), each rank counts the bytes it reads from the
base's safetensors files (every slice `safe_open` hands out) and the peak of the tensor bytes it
holds (a dispatch mode that sees every tensor torch creates, a DTensor by its local piece);
after the start, the bytes of its own pieces of the weights and of the whole model. It writes
them to STATS/start-rank-R.json, and the run goes on as `zen-coder train`'s.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from zen_coder.cli import main
from zen_coder.model import weights
from zen_coder.training import trainer


class HeldBytes(TorchDispatchMode):
    """The bytes of the tensor storages created while active and still alive, and their peak.

    A storage counts once, when an operation first returns it and it is none of the
    operation's inputs' (a view of an existing storage, such as a slice of a memory-mapped
    file, holds nothing new); it stops counting when it is freed. Meta tensors hold nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.peak = 0
        self._live: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {_storage(tensor) for tensor in tree_leaves((args, kwargs))}
        for tensor in tree_leaves(result):
            storage = _storage(tensor)
            if storage is not None and storage not in inputs:
                self._count(storage)
        return result

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        if key in self._live or not storage.nbytes():
            return
        self._live.add(key)
        self.held += storage.nbytes()
        self.peak = max(self.peak, self.held)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def _free(self, key: int, size: int) -> None:
        self._live.discard(key)
        self.held -= size


def _storage(tensor: object) -> torch.UntypedStorage | None:
    if isinstance(tensor, DTensor):
        tensor = tensor.to_local()
    if not isinstance(tensor, Tensor) or tensor.is_meta:
        return None
    return tensor.untyped_storage()


class CountedReads:
    """`safe_open` as the weights module uses it, counting the bytes of every slice read."""

    def __init__(self, safe_open) -> None:
        self.safe_open = safe_open
        self.total = 0
        self.largest = 0

    def __call__(self, *args, **kwargs):
        return _CountedFile(self, self.safe_open(*args, **kwargs))

    def record(self, tensor: Tensor) -> Tensor:
        self.total += tensor.nbytes
        self.largest = max(self.largest, tensor.nbytes)
        return tensor


class _CountedFile:
    def __init__(self, counter: CountedReads, tensor_file) -> None:
        self.counter, self.tensor_file = counter, tensor_file

    def __enter__(self):
        self.tensor_file.__enter__()
        return self

    def __exit__(self, *exc):
        return self.tensor_file.__exit__(*exc)

    def keys(self):
        return self.tensor_file.keys()

    def get_slice(self, name: str):
        return _CountedSlice(self.counter, self.tensor_file.get_slice(name))


class _CountedSlice:
    def __init__(self, counter: CountedReads, tensor_slice) -> None:
        self.counter, self.tensor_slice = counter, tensor_slice

    def get_shape(self):
        return self.tensor_slice.get_shape()

    def __getitem__(self, region):
        return self.counter.record(self.tensor_slice[region])


def _piece_bytes(tensor: Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.nbytes


@contextlib.contextmanager
def measured_start(stats: Path, rank: int) -> Iterator[None]:
    """Measure every model start in this process, writing stats/start-rank-RANK.json."""
    start = trainer._start_model

    @functools.wraps(start)
    def measured(*args, **kwargs):
        reads = CountedReads(weights.safe_open)
        weights.safe_open = reads
        try:
            with HeldBytes() as held:
                model = start(*args, **kwargs)
        finally:
            weights.safe_open = reads.safe_open
        filled = list(weights.filled_weights(model))
        record = {
            "read_bytes": reads.total,
            "largest_read": reads.largest,
            "peak_bytes": held.peak,
            "local_bytes": sum(_piece_bytes(tensor) for _, tensor in filled),
            "model_bytes": sum(tensor.numel() * tensor.element_size() for _, tensor in filled),
        }
        stats.mkdir(parents=True, exist_ok=True)
        (stats / f"start-rank-{rank}.json").write_text(json.dumps(record))
        return model

    trainer._start_model = measured
    try:
        yield
    finally:
        trainer._start_model = start


if __name__ == "__main__":
    with measured_start(Path(sys.argv[1]), int(os.environ.get("RANK", "0"))):
        code = main(["train", *sys.argv[2:]])
    sys.exit(code)
