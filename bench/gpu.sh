#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on an H100/H200): our bf16 batched inference against transformers' best
# setting on the ViT-L config, images/s, peak GPU memory, and bf16-vs-fp32 mask IoU. Run from the repository root
# on a machine with an NVIDIA GPU and a CUDA build of torch:  bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c "import torch, transformers, seggpt_core" 2>/dev/null || "$python" -m pip install --quiet -e ".[test]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$python" bench/gpu_throughput.py --targets 64 --prompts 3 --batch-targets 16
