#!/usr/bin/env bash
# The Monte Carlo engine's GPU checks as one short script, for a machine lent by the device
# tool (its image has torch, Triton, numpy, scipy, pandas and xarray; the rest travels as
# wheels). Here first: bash benchmarks/fetch_gpu_wheels.sh. Then the device tool's run with
#   command: bash benchmarks/gpu_check.sh      carry: [".whl"]      timeout_s: 540
# Extra arguments go to benchmarks/bench_gpu.py (e.g. --photons 2e7). The log comes back as
# $OUT/bench_gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
out="${OUT:-/tmp/ctdose_gpu}"
mkdir -p "$out"
timeout 500 python3 benchmarks/bench_gpu.py "$@" 2>&1 | tee "$out/bench_gpu.log"
