#!/usr/bin/env bash
# GPU check: Triton SwiGLU and ACT kernels against float64 (fp32/fp16/bf16), doc_attention through
# compiled flex with direct BlockMasks, and GPU benchmarks beside Liger-Kernel's SwiGLU and
# create_block_mask + flex. Budget: under 8 minutes on one GPU. Results: benchmarks/gpu/results.json
# (or $OUT/gpu_results.json when OUT is set), a table on stdout with the GPU's name.
# On a machine without a CUDA GPU it prints one line and exits 0.
#   bash benchmarks/gpu/run.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1 \
   || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu/run.sh: no CUDA GPU on this machine; nothing to check (exit 0)"
  exit 0
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import liger_kernel" 2>/dev/null || "$PY" -m pip install -q liger-kernel >/dev/null 2>&1 \
  || echo "liger-kernel not installed (pip failed): its column is skipped"
exec timeout 470 "$PY" benchmarks/gpu/check.py "$@"
