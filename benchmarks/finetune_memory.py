"""Fine-tuning memory: `zen-coder plan` against the measured peak of real steps, and start time.

For each configuration below, in one run, `python -m zen_coder.training.measure` (under
torchrun for two ranks, gloo on the CPU, GPUs hidden) trains three optimizer steps of the
recipe on random tokens with the trainer's own loop and measures every rank's peak without the
planner: the CPU allocator's allocations and frees from torch.profiler's memory events, and the
process's peak resident set as a second opinion (it also holds what no torch tensor owns:
autograd's graph, and oneDNN's buffers for bfloat16 products on CPUs, so it reads higher,
much higher in bfloat16). Rank 0 then plans the same recipe for the same number of ranks. The
ratios printed are planned / measured (1.0 is exact; the planner's target is within 10%).

Then it runs benchmarks/start_time.py, the sharded against the unsharded start of the `small`
preset (cut to 2 blocks) from a Hugging Face folder.

    python benchmarks/finetune_memory.py

On a GPU machine, `torchrun --nproc-per-node N -m zen_coder.training.measure --config RECIPE`
makes the same comparison against `torch.cuda.max_memory_allocated`. Figures from a shared
2-core machine vary by a few MB from run to run (gloo frees its buffers when its threads get to
it); a quiet machine gives steadier ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name, ranks, recipe: each one stresses another part of the plan.
CONFIGURATIONS = [
    (
        "1 process, fp32: optimizer state a quarter of the peak",
        1,
        """
[model]
preset = "tiny"
n_layers = 2
d_model = 256
expert_dim = 256
n_repos = 8
[train]
micro_batch = 1
global_batch = 1
[prepare]
context_length = 128
""",
    ),
    (
        "1 process, fp32: activations first (tiny, 8 x 512 tokens)",
        1,
        """
[model]
preset = "tiny"
n_repos = 8
[train]
micro_batch = 8
global_batch = 8
""",
    ),
    (
        "1 process, fp32: LoRA rank 8 on a frozen base (optimizer state of the adapters only)",
        1,
        """
[model]
preset = "tiny"
n_repos = 8
[train]
micro_batch = 8
global_batch = 8
init_from = "random-base"
[train.lora]
rank = 8
""",
    ),
    (
        "2 ranks, data parallel (FSDP2), bf16, 2 micro-batches per step",
        2,
        """
[model]
preset = "tiny"
n_repos = 8
[train]
micro_batch = 8
global_batch = 32
dtype = "bfloat16"
""",
    ),
    (
        "2 ranks, tensor parallel 2, bf16",
        2,
        """
[model]
preset = "tiny"
n_repos = 8
[train]
micro_batch = 8
global_batch = 8
tensor_parallel = 2
dtype = "bfloat16"
""",
    ),
]


def measure(recipe: Path, ranks: int, out: Path) -> dict:
    """One configuration's report from zen_coder.training.measure."""
    command = [sys.executable, "-m", "zen_coder.training.measure"]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc-per-node={ranks}", "-m", "zen_coder.training.measure"]
    command += ["--config", str(recipe), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f}"


def print_report(name: str, report: dict) -> None:
    planned = report["planned"]["peak"]
    print(f"\n{name}")
    print(f"  planned peak {megabytes(planned)} MB per rank")
    for rank in report["measured"]:
        resident = rank["resident"]
        print(
            f"  rank {rank['rank']}: measured {megabytes(rank['peak'])} MB (profiler), "
            f"planned / measured {planned / rank['peak']:.3f}; resident "
            f"{megabytes(resident)} MB, planned / resident {planned / resident:.3f}"
        )


def start_time() -> None:
    """benchmarks/start_time.py as it is: the sharded against the unsharded start."""
    script = ROOT / "benchmarks" / "start_time.py"
    print("\nstart time (benchmarks/start_time.py):", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, check=True)


def main() -> None:
    print("planned against measured peak memory per rank (CPU, gloo)")
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, ranks, text) in enumerate(CONFIGURATIONS):
            recipe = Path(folder) / f"recipe-{index}.toml"
            recipe.write_text(text)
            print_report(name, measure(recipe, ranks, Path(folder) / f"report-{index}.json"))
    start_time()


if __name__ == "__main__":
    main()
