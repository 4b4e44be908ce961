#!/usr/bin/env bash
# The one-command accelerator check: speed of the full FixMatch step at every precision with and
# without XLA, batched augmentation, 1 vs all GPUs, and a 3-minute Fashion-MNIST run (about 8
# minutes on one GPU). Writes OUT/gpu.json and OUT/gpu.md (OUT defaults to ./gpu_bench).
#   bash bench/gpu.sh [OUT]            # on a GPU machine (TensorFlow from requirements-gpu.txt)
#   bash bench/gpu.sh OUT --small      # tiny sizes: also runs on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_bench}"
shift || true
python="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then python=.venv/bin/python; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec "$python" bench/gpu.py --out="$out" "$@"
