#!/usr/bin/env bash
# The accelerator suite in one command, under an 8-minute limit: accelerator sizes where JAX
# finds a GPU/TPU, the tiny CPU sizes otherwise (so CI can check that it runs).
#   bash benchmarks/gpu_suite.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_suite.json}"
backend=$(python -c "import jax; print(jax.default_backend())")
small=""
if [ "$backend" = "cpu" ]; then small="--small"; fi
timeout 480 python -m benchmarks.gpu_suite $small --out="$out"
