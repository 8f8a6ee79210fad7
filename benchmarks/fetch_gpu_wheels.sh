#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_check.sh installs on the device tool's GPU
# machine (Python 3.12, x86-64; nothing can be fetched there) into .whl/ (ignored by git,
# about 27 MB). Usage: bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl -r benchmarks/gpu_wheels.txt
ls -1 .whl
