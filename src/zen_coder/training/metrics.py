"""Training metrics as JSON lines (for scripts and the quickstart report) and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard.

    Only the main rank writes; other ranks get a writer that does nothing.
    """

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = directory / "metrics.jsonl"
        self.board = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            directory.mkdir(parents=True, exist_ok=True)
            self.board = SummaryWriter(str(directory / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        for name, value in _scalars(values):
            self.board.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _scalars(values: dict[str, Any], prefix: str = ""):
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{name}", value


def read_metrics(directory: Path) -> list[dict]:
    """Every event of a run, in order; events of a resumed run's redone steps replace the
    interrupted run's."""
    path = directory / "metrics.jsonl"
    if not path.exists():
        return []
    events: dict[tuple[str, int], dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            event = json.loads(line)
            events[event["kind"], event["step"]] = event
    return sorted(events.values(), key=lambda event: (event["step"], event["kind"]))
