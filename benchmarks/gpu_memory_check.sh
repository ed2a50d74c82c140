#!/usr/bin/env bash
# The planner's GPU check, for a task lent a GPU: `zen-coder plan` against
# torch.cuda.max_memory_allocated for the `small` preset (2.8B parameters) training on one GPU in
# bfloat16 with FlexAttention, 2 x 4096 tokens per micro-batch and 2 micro-batches per step,
# without and then with full activation checkpointing, then LoRA (rank 16) on the frozen base;
# last, the CUDA tests of the grouped expert kernel and the compiled blocks. Each line ends with planned / measured
# (the planner's target: within 10%). It runs from src/ without installing the package and needs
# torch, numpy and safetensors there. A few minutes; extra arguments go to both runs
# (e.g. --set train.micro_batch=1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
recipe=$(mktemp --suffix=.toml)
trap 'rm -f "$recipe"' EXIT
cat > "$recipe" <<'RECIPE'
[model]
preset = "small"
attention = "flex"
n_repos = 8
[train]
dtype = "bfloat16"
micro_batch = 2
global_batch = 4
[prepare]
context_length = 4096
vocab_size = 32768
RECIPE
python3 -m zen_coder.training.measure --config "$recipe" "$@"
python3 -m zen_coder.training.measure --config "$recipe" \
    --set train.activation_checkpointing=full "$@"
python3 -m zen_coder.training.measure --config "$recipe" \
    --set train.lora.rank=16 --set train.init_from=random-base "$@"
python3 -m pytest -q -p no:cacheprovider tests/model/test_cuda.py
