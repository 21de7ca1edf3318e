#!/usr/bin/env bash
# The GPU benchmark: the CIFAR-10 study at GPU size, then the training and detection throughput
# benchmarks, in one script sized to finish in under 8 minutes on one H100/H200-class GPU.
#
#   bash benchmarks/gpu.sh [OUT]        (run from the repository root; OUT defaults to runs/gpu-bench)
#
# Needs ../shared/data/cifar10 beside the repository and a CUDA torch in .venv (or $PYTHON).
# Each part has its own time limit so the whole script stays under 8 minutes; a study cut short
# resumes from its finished stages when the script is run again. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu-bench}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
exec > >(tee -a "$LOG") 2>&1

echo "== machine: $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "cpus: $(nproc)"
"$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu.sh: torch sees no CUDA device; this script is for a GPU machine")
print("torch", torch.__version__, "device", torch.cuda.get_device_name(0))
PY

start=$(date +%s)
run_part() {  # run_part NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) rc=0
  echo "== $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" || rc=$?
  echo "== $name: rc=$rc, $(( $(date +%s) - t0 ))s"
  return 0
}

# 1. the study (resumable: a second run continues where the limit stopped it)
run_part "study (configs/cifar10-gpu.yaml)" 330 \
  "$PYTHON" -m eftclip study --config configs/cifar10-gpu.yaml --out "$OUT/study" --cache "$OUT/cache" --no-progress

# 2. pre-training throughput (pairs/s): eftclip train beside open_clip's trainer (both on CPU threads,
#    as that benchmark defines them; the study above shows the GPU pre-training time per stage)
run_part "train throughput" 75 "$PYTHON" benchmarks/train_throughput.py --pairs 2048 --batch-size 128 --epochs 3 --threads 8

# 3. detection throughput (images/s of the whole detection step, each oracle backend that can be built)
run_part "detect throughput" 60 "$PYTHON" benchmarks/detect_throughput.py --images 128 --threads 8

echo "== total $(( $(date +%s) - start ))s; study tables: $OUT/study/tables, report: $OUT/study/report.md"
