#!/usr/bin/env bash
# The GPU check, for a task lent one GPU (an H100): the `small` preset (about 1B parameters
# active) trains in bf16 for 200 optimizer steps on random tokens; prints tokens/s and MFU
# against the GPU's measured bf16 matmul peak (target >= 35%). Needs only torch and numpy there:
# it runs from src/ without installing the package. Under 8 minutes.
#
# The settings a GPU run of `zen-coder train` would use: FlexAttention's block-sparse document
# mask (SDPA's materialized mask cost 40% of the step), each block compiled, batch 2 x 4096
# tokens per micro-batch and 4 micro-batches per optimizer step (gradient accumulation, as the
# card's batch of 256 sequences needs). Extra arguments go to benchmarks/train_throughput.py,
# e.g. `--attention sdpa` or `--accumulation 1` to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/train_throughput.py --preset small --device cuda --dtype bfloat16 \
    --batch 2 --length 4096 --warmup 5 --steps 200 --attention flex --compile --accumulation 4 \
    "$@"
