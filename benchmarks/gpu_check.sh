#!/usr/bin/env bash
# The GPU check, for a task lent one GPU (an H100): the `small` preset (about 1B parameters
# active) trains in bf16 for a few hundred steps on random tokens; prints tokens/s and MFU against
# the GPU's measured bf16 matmul peak (target >= 35%). Needs only torch and numpy there: it runs
# from src/ without installing the package. Under 8 minutes. Batch 4 x 4096 tokens per step, or
# 2 x 4096 where the GPU lacks the memory for 4.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
check() {
    python3 benchmarks/train_throughput.py --preset small --device cuda --dtype bfloat16 \
        --length 4096 --warmup 10 --steps 200 --batch "$@"
}
check 4 "$@" || { echo "batch 4 did not fit: batch 2"; check 2 "$@"; }
