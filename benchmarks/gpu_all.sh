#!/usr/bin/env bash
# Everything a GPU session runs for issue 4, in one command; results land in $OUT (default ./gpu-results).
#   bash benchmarks/gpu_all.sh
# 1. the whole test suite on CUDA (Triton kernels in-process against torch, @gpu real-shape cases included);
# 2. bench_kernels.py (full F x N x D grid, FlashVID at 32x196x3584 keep 0.1 torch vs Triton);
# 3. bench_e2e.py (random-weight LLaVA-OV-7B and Qwen2.5-VL-7B, 32 frames, every method x keep 1.0/0.25/0.1).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# The package maps kernels/ and pipelines/ under flashvid_cli: install it (no deps: the image has them) if needed.
"$PY" -c "import flashvid_cli.kernels" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import sys, torch, triton, transformers; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__)"
  date -u +%FT%TZ
} >"$OUT/environment.txt" 2>&1
status=0
"$PY" -m pytest -q -rs 2>&1 | tee "$OUT/tests.txt" | tail -15 || status=1
"$PY" benchmarks/bench_kernels.py 2>&1 | tee "$OUT/bench_kernels.txt" | tail -12 || status=1
tail -1 "$OUT/bench_kernels.txt" >"$OUT/bench_kernels.json"
"$PY" benchmarks/bench_e2e.py 2>"$OUT/bench_e2e.err" | tee "$OUT/bench_e2e.txt" | grep -v '^{' || status=1
tail -1 "$OUT/bench_e2e.txt" >"$OUT/bench_e2e.json"
exit $status
