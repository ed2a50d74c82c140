#!/usr/bin/env bash
# The GPU check, for a task lent one GPU (an H100): the `small` preset (about 1B parameters
# active) trains in bf16 for a few hundred steps on random tokens; prints tokens/s and MFU against
# the GPU's measured bf16 matmul peak (target >= 35%). Needs only torch and numpy there: it runs
# from src/ without installing the package. Under 8 minutes. Batch 2 x 4096 tokens per step
# (4 x 4096 does not fit in 80 GB with fp32 AdamW state), FlexAttention's block-sparse document
# mask (the materialized mask of "sdpa" cost 40% of the step there); pass --attention sdpa to
# compare.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/train_throughput.py --preset small --device cuda --dtype bfloat16 \
    --batch 2 --length 4096 --warmup 10 --steps 200 --attention flex "$@"
