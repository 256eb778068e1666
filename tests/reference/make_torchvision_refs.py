r"""Tiny random torchvision VGG / AlexNet / DenseNet instances and their reference outputs.

Runs only where torch and torchvision are installed (a side venv, never linkjax's):

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /work/torchenv/bin/python tests/reference/make_torchvision_refs.py [--out=tests/reference]

For each spec in `SPECS` it writes `<name>.pth` (`torch.save(model.state_dict())`) and
`<name>_ref.npz`: 'img_uint8' [N, H, W, 3], 'x_nchw' (torchvision's eval transform: PIL
Resize(resize), CenterCrop(crop), ToTensor, Normalize), 'resize', 'crop', 'logits',
'r_original' (flattened output of all children but the last), 'r_penultimate' (the last linear
layer's input), 'r_2d' and named intermediates (NCHW maps, as torch computes them).

The models are torchvision's own classes and forward passes; only the widths are reduced (VGG
via `make_layers` on a small cfg and an identically structured small classifier; AlexNet by
swapping in layers of the same kinds and hyper-parameters with fewer channels). BatchNorm
statistics and affine parameters and all biases are randomised so that they matter. Input sizes
are chosen to exercise odd sizes and PyTorch's adaptive-pooling bins: VGG 9 -> 7 (overlapping
bins), VGG-BN 5 -> 7 and AlexNet 2 -> 6 (input smaller than output: repeated bins), DenseNet odd
maps through the stride-2 max pool and the 2×2 average pools.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> family, architecture arguments, (image h, w), resize, crop.
SPECS = {
    "vgg_tiny": {"family": "vgg", "cfg": [4, "M", 8, "M", 8, 8, "M"], "batch_norm": False,
                 "hidden": 16, "image": (80, 90), "resize": 80, "crop": 76},
    "vgg_bn_tiny": {"family": "vgg", "cfg": [4, "M", 8, 8, "M", 8, "M"], "batch_norm": True,
                    "hidden": 12, "image": (44, 48), "resize": 44, "crop": 40},
    "alexnet_tiny": {"family": "alexnet", "widths": (4, 8, 8, 6, 8), "hidden": 16,
                     "image": (104, 110), "resize": 104, "crop": 99},
    "densenet_tiny": {"family": "densenet", "growth_rate": 4, "block_config": (2, 3, 1, 2),
                      "num_init_features": 8, "bn_size": 2, "image": (72, 80), "resize": 72,
                      "crop": 70},
}
NUM_CLASSES = 7


def tiny_vgg(cfg, batch_norm: bool, hidden: int, num_classes: int = NUM_CLASSES) -> nn.Module:
  """torchvision VGG over `make_layers(cfg)` with torchvision's classifier structure, small."""
  model = torchvision.models.VGG(torchvision.models.vgg.make_layers(cfg, batch_norm=batch_norm),
                                 num_classes=num_classes)
  c = [v for v in cfg if v != "M"][-1]
  model.classifier = nn.Sequential(
      nn.Linear(c * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(0.5),
      nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
      nn.Linear(hidden, num_classes))
  return model


def tiny_alexnet(widths, hidden: int, num_classes: int = NUM_CLASSES) -> nn.Module:
  """torchvision AlexNet (its forward and avgpool) with narrower layers of the same kinds."""
  model = torchvision.models.AlexNet(num_classes=num_classes)
  w = widths
  model.features = nn.Sequential(
      nn.Conv2d(3, w[0], kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(w[0], w[1], kernel_size=5, padding=2), nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(w[1], w[2], kernel_size=3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(w[2], w[3], kernel_size=3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(w[3], w[4], kernel_size=3, padding=1), nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2))
  model.classifier = nn.Sequential(
      nn.Dropout(0.5), nn.Linear(w[4] * 6 * 6, hidden), nn.ReLU(inplace=True),
      nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
      nn.Linear(hidden, num_classes))
  return model


def build(spec: dict, seed: int) -> nn.Module:
  """The spec's model with random weights, BatchNorm statistics and biases, in eval mode."""
  torch.manual_seed(seed)
  if spec["family"] == "vgg":
    model = tiny_vgg(spec["cfg"], spec["batch_norm"], spec["hidden"])
  elif spec["family"] == "alexnet":
    model = tiny_alexnet(spec["widths"], spec["hidden"])
  else:
    model = torchvision.models.DenseNet(
        growth_rate=spec["growth_rate"], block_config=tuple(spec["block_config"]),
        num_init_features=spec["num_init_features"], bn_size=spec["bn_size"],
        num_classes=NUM_CLASSES)
  randomize(model)
  return model.eval()


def randomize(model: nn.Module) -> None:
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.normal_(1.0, 0.2)
        m.bias.normal_(0, 0.2)
      elif isinstance(m, nn.Linear):
        # torchvision's VGG init (N(0, 0.01), zero bias) would make logits vanish in tiny nets.
        nn.init.kaiming_uniform_(m.weight, a=5**0.5)
        m.bias.normal_(0, 0.1)
      elif isinstance(m, nn.Conv2d) and m.bias is not None:
        m.bias.normal_(0, 0.1)


def eval_transform(img: np.ndarray, resize: int | None, crop: int | None) -> np.ndarray:
  """torchvision's ImageNet eval transform of one uint8 HWC image -> [3, crop, crop]."""
  steps = ([transforms.Resize(resize)] if resize else []) + (
      [transforms.CenterCrop(crop)] if crop else [])
  steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
  return transforms.Compose(steps)(Image.fromarray(img)).numpy()


def _named_modules(model: nn.Module, family: str) -> dict[str, nn.Module]:
  """Modules whose outputs are recorded, by linkjax activation name."""
  if family == "densenet":
    f = model.features
    names = {"stem": f.pool0, "features": f}
    for name, child in f.named_children():
      if name.startswith(("denseblock", "transition")):
        names[name] = child
    return names
  names = {"features": model.features, "r_2d": model.avgpool}
  pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
  names.update({f"pool{i + 1}": m for i, m in enumerate(pools)})
  relus = [m for m in model.classifier if isinstance(m, nn.ReLU)]
  names.update({f"fc{6 + i}": m for i, m in enumerate(relus)})
  return names


def reference_outputs(model: nn.Module, family: str, x: np.ndarray) -> dict[str, np.ndarray]:
  """logits, r for both R choices, r_2d and named intermediates of `model` on x [N, 3, H, W]."""
  out: dict[str, torch.Tensor] = {}
  hooks = []
  for name, m in _named_modules(model, family).items():
    # Clone: DenseNet's forward applies an in-place ReLU to the features afterwards.
    hooks.append(m.register_forward_hook(
        lambda mod, inp, o, name=name: out.__setitem__(name, o.detach().clone())))
  last = model.classifier if family == "densenet" else model.classifier[-1]
  hooks.append(last.register_forward_pre_hook(
      lambda mod, inp: out.__setitem__("r_penultimate", inp[0].detach().clone())))
  with torch.no_grad():
    out["logits"] = model(torch.from_numpy(x))
  for h in hooks:
    h.remove()
  if family == "densenet":
    out["r_2d"] = out["features"]
  out["r_original"] = torch.flatten(out["r_2d"], 1)
  return {k: v.numpy().astype(np.float32) for k, v in out.items()}


def make(name: str, spec: dict, out_dir: pathlib.Path, seed: int) -> None:
  model = build(spec, seed)
  rng = np.random.default_rng(seed)
  imgs = rng.integers(0, 256, (2, *spec["image"], 3), dtype=np.uint8)
  x = np.stack([eval_transform(im, spec["resize"], spec["crop"]) for im in imgs])
  ref = reference_outputs(model, spec["family"], x)
  torch.save(model.state_dict(), out_dir / f"{name}.pth")
  np.savez_compressed(out_dir / f"{name}_ref.npz", img_uint8=imgs, x_nchw=x,
                      resize=np.int64(spec["resize"]), crop=np.int64(spec["crop"]), **ref)
  print(f"{name}: {sum(p.numel() for p in model.parameters())} params, x {x.shape}, "
        f"r_original {ref['r_original'].shape}, r_penultimate {ref['r_penultimate'].shape}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent),
                      help="output directory (default: this script's folder)")
  parser.add_argument("--seed", type=int, default=0, help="torch/numpy seed (default 0)")
  args = parser.parse_args()
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
  for i, (name, spec) in enumerate(SPECS.items()):
    make(name, spec, out_dir, args.seed + i)


if __name__ == "__main__":
  main()
