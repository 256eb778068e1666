r"""Full-size check (manual, not CI): torchvision VGG16, AlexNet and DenseNet-201 with random weights
against linkjax's torch-free converter and `experiments.classify`.

Three steps in two environments (`check_full_size.sh` runs them all):

  # 1. side venv with torch + torchvision: random models, .pth files, images, torch's outputs
  /work/torchenv/bin/python tests/reference/check_full_size.py make --dir=/tmp/fullsize
  # 2. linkjax's venv (no torch): convert (arch inferred) and classify
  python -m ports.torchvision --pth=/tmp/fullsize/vgg16.pth --out=/tmp/fullsize/vgg16_ckpt
  python -m experiments.classify --classifier=/tmp/fullsize/vgg16_ckpt \
      --images=/tmp/fullsize/images.npy --out=/tmp/fullsize/vgg16_ours.npz
  # (and the same with --r_layer=penultimate into {arch}_pen_ckpt, {arch}_ours_penultimate.npz)
  # 3. either venv (numpy only): max relative errors of R (both choices) and logits
  python tests/reference/check_full_size.py compare --dir=/tmp/fullsize

Errors are max|ours - torch| / max|torch| per array, as in the tests (pass: <= 1e-4).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ARCHS = ("vgg16", "alexnet", "densenet201")
TOL = 1e-4


def make(out: pathlib.Path, n_images: int, seed: int) -> None:
  import torch  # noqa: PLC0415  (side venv only)
  import torchvision  # noqa: PLC0415

  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import make_torchvision_refs as refs  # noqa: PLC0415

  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  imgs = rng.integers(0, 256, (n_images, 240, 320, 3), dtype=np.uint8)
  np.save(out / "images.npy", imgs)
  # torchvision's eval transform for these weights: Resize(256), CenterCrop(224).
  x = np.stack([refs.eval_transform(im, 256, 224) for im in imgs])
  for i, arch in enumerate(ARCHS):
    torch.manual_seed(seed + i)
    model = getattr(torchvision.models, arch)()
    refs.randomize(model)
    model.eval()
    ref = refs.reference_outputs(model, arch.rstrip("0123456789"), x)
    torch.save(model.state_dict(), out / f"{arch}.pth")
    np.savez(out / f"{arch}_torch.npz", logits=ref["logits"], r=ref["r_original"],
             r_penultimate=ref["r_penultimate"])
    print(f"{arch}: {sum(p.numel() for p in model.parameters())} params, "
          f"r {ref['r_original'].shape}, logits {ref['logits'].shape}")


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
  return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def compare(d: pathlib.Path) -> bool:
  ok = True
  for arch in ARCHS:
    ref, ours = np.load(d / f"{arch}_torch.npz"), np.load(d / f"{arch}_ours.npz")
    errs = {}
    for k in ("r", "logits"):
      assert ours[k].shape == ref[k].shape, (arch, k, ours[k].shape, ref[k].shape)
      errs[k] = _rel_err(ours[k], ref[k])
    same_pred = bool(np.all(ours["pred"] == ref["logits"].argmax(-1)))
    pen = d / f"{arch}_ours_penultimate.npz"
    if pen.exists():  # converted with --r_layer=penultimate
      r_pen = np.load(pen)["r"]
      assert r_pen.shape == ref["r_penultimate"].shape, (arch, r_pen.shape)
      errs["r_penultimate"] = _rel_err(r_pen, ref["r_penultimate"])
    ok &= max(errs.values()) <= TOL and same_pred
    print(f"{arch:12s} r {ref['r'].shape[1]:6d}-d max rel err {errs['r']:.2e}, logits "
          f"{errs['logits']:.2e}, same argmax: {same_pred}"
          + (f"; penultimate r {ref['r_penultimate'].shape[1]}-d {errs['r_penultimate']:.2e}"
             if "r_penultimate" in errs else ""))
  print("PASS" if ok else "FAIL")
  return ok


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("step", choices=("make", "compare"))
  parser.add_argument("--dir", default="/tmp/fullsize", help="working directory")
  parser.add_argument("--n_images", type=int, default=2, help="images to classify")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.step == "make":
    make(pathlib.Path(args.dir), args.n_images, args.seed)
  elif not compare(pathlib.Path(args.dir)):
    sys.exit(1)


if __name__ == "__main__":
  main()
