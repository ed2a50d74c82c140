"""Training checkpoints with `torch.distributed.checkpoint`, and the export of a run's model.

A checkpoint holds everything a resumed run needs to continue exactly where the interrupted one
stood: the model's trained parameters and buffers and the optimizer (sharded as they are, when
FSDP shards them), scheduler, the data loader's position, the step counters and every rank's
random-number generator states. Frozen parameters (a LoRA run's base) are left out: the run
reads them from its `init_from` at every start, so its checkpoints hold the adapters alone. It is
written under a temporary name and renamed when every rank is done, so a run killed mid-write
resumes from the previous one; only the newest `keep` are kept, and never fewer than one while
the run goes on.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_distributed
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from zen_coder.errors import ZenCoderError
from zen_coder.files import install_directory
from zen_coder.model.config import ModelConfig
from zen_coder.model.folder import save_model
from zen_coder.training.config import LoraConfig
from zen_coder.training.lora import merge_weights

PREFIX = "step-"
# What a checkpoint holds of the model: what trains (all of it, but in a LoRA run). Loading
# restores what the checkpoint holds and leaves the frozen base as the run built it.
TRAINED = StateDictOptions(ignore_frozen_params=True)
RESTORE = StateDictOptions(ignore_frozen_params=True, strict=False)


def _rng_state() -> bytes:
    """Every random generator's state, pickled: its size varies, which DCP allows for bytes."""
    return pickle.dumps(
        {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
    )


def _set_rng_state(saved: bytes) -> None:
    state = pickle.loads(saved)  # our own checkpoint: trusted
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class TrainState(Stateful):
    """The checkpointed state of a run, gathered and restored through DCP."""

    def __init__(self, model, optimizer, scheduler, loader, counters: dict, rank: int) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loader, self.counters, self.rank = loader, counters, rank

    def state_dict(self) -> dict:
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer, options=TRAINED)
        return {
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "data": self.loader.state_dict(),
            "counters": dict(self.counters),
            f"rng_rank{self.rank}": _rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=RESTORE,
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["data"])
        self.counters.update(state["counters"])
        _set_rng_state(state[f"rng_rank{self.rank}"])


def _barrier() -> None:
    if torch_distributed.is_initialized():
        torch_distributed.barrier()


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns that it assumes a single process when no process group exists: it is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint in `directory`, if any."""
    done = sorted(path for path in directory.glob(f"{PREFIX}*") if path.is_dir())
    return done[-1] if done else None


def save(directory: Path, state: TrainState, step: int, keep: int, is_main: bool) -> Path:
    """Write a checkpoint of `state` at `step` (collective: every rank calls it), then keep the
    newest `keep`, but at least this one: a run that is still going must be able to resume."""
    target = directory / f"{PREFIX}{step:09d}"
    partial = directory / f".{PREFIX}{step:09d}.partial"
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    _barrier()
    with _single_process_is_intended():
        dcp.save({"run": state}, checkpoint_id=partial)
    _barrier()
    if is_main:
        install_directory(partial, target)
        prune(directory, max(keep, 1))
    _barrier()
    return target


def prune(directory: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints in `directory` (0 removes every one)."""
    done = sorted(path for path in directory.glob(f"{PREFIX}*") if path.is_dir())
    for old in done[: len(done) - keep]:
        shutil.rmtree(old, ignore_errors=True)


def load(path: Path, state: TrainState) -> None:
    """Restore `state` from the checkpoint at `path` (collective)."""
    try:
        # Parameters that never received a gradient have no optimizer state to restore.
        with _single_process_is_intended():
            dcp.load(
                {"run": state},
                checkpoint_id=path,
                planner=DefaultLoadPlanner(allow_partial_load=True),
            )
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZenCoderError(
            f"checkpoint {path} cannot be loaded ({reason}); remove it to resume from an "
            "earlier one, or train into a new --out folder"
        ) from None


def export_native(
    model: torch.nn.Module,
    config: ModelConfig,
    directory: Path,
    languages: Sequence[str],
    tokenizer: Path,
    *,
    repos: Sequence[str],
    lora: LoraConfig | None = None,
) -> None:
    """The trained model as a zen-coder model folder (`zen_coder.model.folder`), with the data's
    language and repository tables: every rank gathers the full weights (collective under
    FSDP), the first writes them, with a LoRA run's adapters merged into their weights
    (`lora`): the folder holds a plain model."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if not torch_distributed.is_initialized() or torch_distributed.get_rank() == 0:
        if lora is not None and lora.enabled:
            weights = merge_weights(weights, lora)
        save_model(directory, config, weights, languages, tokenizer, repos=repos)
    _barrier()
