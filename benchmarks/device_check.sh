#!/usr/bin/env bash
# One device's numbers in minutes (issue #25), then the tests marked `cuda`.
#   benchmarks/device_check.sh            # from the repository root, with the venv of `make` (.venv)
#   PYTHON=python3 benchmarks/device_check.sh
# On a CUDA GPU (at most ~8 minutes on one GPU): ResNet-50 at 256x128 forward+backward images/s in
# fp32, bf16 and fp16; the attack export's images/s against the bare forward+backward of the same
# model; evaluation time of a Market-1501-size ranking; training images/s; then `pytest -m cuda`
# (attack within eps on the GPU, bf16/fp16 adversarial mAP within 1 point of fp32, CPU/GPU agreement).
# Without a GPU: the same at small sizes on the CPU (a smoke run, it says so); the cuda tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
"$PYTHON" benchmarks/device_check.py "$@"
echo "tests marked cuda:"
"$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/
echo "device check done in $(( $(date +%s) - start )) s"
