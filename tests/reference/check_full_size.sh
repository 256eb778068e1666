#!/usr/bin/env bash
# Full-size torchvision -> linkjax check (manual): see check_full_size.py. Run from the repo root:
#   TORCH_PY=/work/torchenv/bin/python JAX_PY=/work/venv/bin/python tests/reference/check_full_size.sh
set -euo pipefail
TORCH_PY=${TORCH_PY:-/work/torchenv/bin/python}
JAX_PY=${JAX_PY:-python}
DIR=${DIR:-/tmp/fullsize}
export PYTHONPATH="$PWD" JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
"$TORCH_PY" tests/reference/check_full_size.py make --dir="$DIR"
for arch in vgg16 alexnet densenet201; do
  # No --arch: the family and layout are inferred from the keys.
  "$JAX_PY" -m ports.torchvision --pth="$DIR/$arch.pth" --out="$DIR/${arch}_ckpt"
  "$JAX_PY" -m experiments.classify --classifier="$DIR/${arch}_ckpt" --images="$DIR/images.npy" \
      --out="$DIR/${arch}_ours.npz"
  # R = the last linear layer's input (4096 / 4096 / 1920).
  "$JAX_PY" -m ports.torchvision --pth="$DIR/$arch.pth" --out="$DIR/${arch}_pen_ckpt" \
      --r_layer=penultimate
  "$JAX_PY" -m experiments.classify --classifier="$DIR/${arch}_pen_ckpt" \
      --images="$DIR/images.npy" --out="$DIR/${arch}_ours_penultimate.npz"
done
"$JAX_PY" tests/reference/check_full_size.py compare --dir="$DIR"
