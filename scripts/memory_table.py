"""Regenerate the memory table of docs/training.md from `zen-coder plan`.

    python scripts/memory_table.py       # zen-coder installed (or PYTHONPATH=src)

Every row is a plan (`zen_coder.training.plan`, what `zen-coder plan --markdown` prints) of a
recipe on a number of GPUs with some settings; nothing in the table is written by hand. The
70B rows take a minute or two each.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zen_coder.training.plan import Cluster, markdown_table, parse_size, plan, planned_configs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "training.md"
BEGIN, END = "<!-- memory table: scripts/memory_table.py -->", "<!-- end of memory table -->"
H100 = parse_size("80GiB")  # an 80 GB H100: nvidia-smi reports 81,559 MiB
SMALL = ["model.preset=small", "model.context_length=4096", "model.vocab_size=32768"]
SMALL += ["train.dtype=bfloat16", "train.micro_batch=2", "train.global_batch=16"]
SEVENTY = "configs/zen-coder-70b.toml"
CARD = ["model.context_length=131072", "train.activation_checkpointing=off"]
CARD += ["train.cpu_offload=false", "train.sync_every_micro_batch=false"]

# (what the row shows, recipe, --set overrides, GPUs)
LORA = ["train.lora.rank=16", "train.init_from=base"]
ROWS = [
    ("small", "configs/tiny.toml", SMALL, 1),
    ("small, LoRA rank 16", "configs/tiny.toml", [*SMALL, *LORA], 1),
    ("small", "configs/tiny.toml", SMALL, 8),
    ("zen-coder-70b, the card's settings", SEVENTY, CARD, 8),
    ("zen-coder-70b, the recipe", SEVENTY, [], 8),
    ("zen-coder-70b, the recipe at 32K tokens", SEVENTY, ["model.context_length=32768"], 8),
    ("zen-coder-70b, the recipe at 128K tokens", SEVENTY, ["model.context_length=131072"], 8),
    ("zen-coder-70b, the recipe without CPU offload", SEVENTY, ["train.cpu_offload=false"], 8),
    ("zen-coder-70b, the recipe without CPU offload", SEVENTY, ["train.cpu_offload=false"], 32),
    (
        "zen-coder-70b, LoRA rank 16 without CPU offload (data parallel only)",
        SEVENTY,
        ["train.cpu_offload=false", "train.tensor_parallel=1", *LORA[:1]],
        8,
    ),
    (
        "zen-coder-70b, the recipe without CPU offload at 8K tokens",
        SEVENTY,
        ["train.cpu_offload=false", "model.context_length=8192"],
        32,
    ),
]


def rows() -> list[tuple[str, object]]:
    planned = []
    for label, recipe, overrides, gpus in ROWS:
        model_config, train = planned_configs(ROOT / recipe, overrides)
        print(f"planning {recipe} {' '.join(overrides)} on {gpus} GPUs", file=sys.stderr)
        planned.append((label, plan(model_config, train, Cluster(gpus, H100))))
    return planned


def main() -> None:
    table = markdown_table(rows())
    text = DOCS.read_text()  # read after the plans, so edits made meanwhile stay
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOCS.write_text(text[:start] + "\n" + table + "\n" + text[end:])


if __name__ == "__main__":
    main()
