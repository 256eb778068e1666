r"""torchvision ResNet state dict -> linkjax ResNet checkpoint, without torch.

    python -m ports.torchvision --arch=resnet50 --pth=resnet50-0676ba61.pth --out=ckpt/resnet50

The conversion is an explicit key table (`key_table`): one row per target parameter naming its
source key and layout helper. Every source key must be consumed or be on `IGNORED_SUFFIXES`;
every target parameter must be filled; shapes must match. Otherwise a single ConversionError
lists all missing, unexpected and mismatched keys. Without `--arch`, block type, stage sizes,
width and class count are inferred from the keys (`infer_config`).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

from linkjax import checkpoint
from linkjax.models import resnet
from ports import torch_pickle, validate

# Buffers torch keeps for training only; they have no counterpart in an inference model.
IGNORED_SUFFIXES = ("num_batches_tracked",)

ARCHS = {f"resnet{d}": d for d in resnet.DEPTHS}


class ConversionError(ValueError):
  """The state dict does not match the target architecture."""


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight [O, I, kh, kw] -> Flax [kh, kw, I, O]."""
  return np.transpose(w, (2, 3, 1, 0))


def linear_to_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight [out, in] -> Flax kernel [in, out]."""
  return np.transpose(w, (1, 0))


def identity(w: np.ndarray) -> np.ndarray:
  return w


Row = tuple[str, tuple, Callable[[np.ndarray], np.ndarray]]


def _conv_rows(src: str, dst: tuple) -> list[Row]:
  return [(f"{src}.weight", dst + ("kernel",), oihw_to_hwio)]


def _bn_rows(src: str, dst: tuple) -> list[Row]:
  return [(f"{src}.weight", dst + ("scale",), identity),
          (f"{src}.bias", dst + ("bias",), identity),
          (f"{src}.running_mean", dst + ("mean",), identity),
          (f"{src}.running_var", dst + ("var",), identity)]


def key_table(config: resnet.ResNetConfig) -> list[Row]:
  """(source key, target state path, layout helper) for every parameter of the ResNet."""
  rows = _conv_rows("conv1", ("conv1",)) + _bn_rows("bn1", ("bn1",))
  n_convs = 3 if config.block_type == "bottleneck" else 2
  expansion = resnet.EXPANSION[config.block_type]
  cin = config.width
  for i, n in enumerate(config.stages):
    planes = config.width * 2**i
    for j in range(n):
      src, dst = f"layer{i + 1}.{j}", (f"layer{i + 1}", j)
      for c in range(1, n_convs + 1):
        rows += _conv_rows(f"{src}.conv{c}", dst + (f"conv{c}",))
        rows += _bn_rows(f"{src}.bn{c}", dst + (f"bn{c}",))
      stride = 2 if (i > 0 and j == 0) else 1
      if stride != 1 or cin != planes * expansion:
        rows += _conv_rows(f"{src}.downsample.0", dst + ("downsample", 0))
        rows += _bn_rows(f"{src}.downsample.1", dst + ("downsample", 1))
      cin = planes * expansion
  rows += [("fc.weight", ("fc", "kernel"), linear_to_kernel), ("fc.bias", ("fc", "bias"), identity)]
  return rows


def _abstract(config: resnet.ResNetConfig) -> tuple[nnx.GraphDef, nnx.State]:
  # eval_shape: no weights are drawn (random init compiles one kernel per shape: slow on CPU).
  return nnx.split(nnx.eval_shape(lambda: resnet.ResNet(config, rngs=nnx.Rngs(0))))


def source_shapes(config: resnet.ResNetConfig) -> dict[str, tuple[int, ...]]:
  """The torchvision state dict layout {key: shape} that `config` expects (without buffers
  on IGNORED_SUFFIXES)."""
  _, abstract_state = _abstract(config)
  shapes = {tuple(p): v.get_value().shape for p, v in nnx.to_flat_state(abstract_state)}
  out = {}
  for src, dst, fn in key_table(config):
    shape = shapes[dst]
    if fn is oihw_to_hwio:
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif fn is linear_to_kernel:
      shape = (shape[1], shape[0])
    out[src] = tuple(shape)
  return out


def _set_nested(tree: dict, path: Sequence, value: np.ndarray) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def convert_state_dict(sd: dict[str, np.ndarray], config: resnet.ResNetConfig, *,
                       allow_nonfinite: bool = False) -> resnet.ResNet:
  """Builds a ResNet from a torchvision state dict.

  Args:
    sd: {torch key: array}, e.g. from `ports.torch_pickle.load_state_dict`.
    config: target architecture.
    allow_nonfinite: accept NaN/inf values (refused by default).

  Returns:
    the ResNet with all parameters and BatchNorm statistics from `sd` (float32).

  Raises:
    ConversionError: listing every missing, unexpected and shape-mismatched key, and every
      tensor that is not float32/float16/bfloat16 or not finite, at once.
  """
  graphdef, abstract_state = _abstract(config)
  targets = {tuple(path): var.get_value() for path, var in nnx.to_flat_state(abstract_state)}
  rows = key_table(config)
  table_targets = {dst for _, dst, _ in rows}
  # The table must cover the model exactly; a mismatch here is a bug in this file, not the input.
  if table_targets != set(targets):
    raise AssertionError(f"key table out of sync with the model: "
                         f"{sorted(map(str, set(targets) ^ table_targets))}")

  missing, mismatched, values = [], [], {}
  for src, dst, fn in rows:
    if src not in sd:
      missing.append(src)
      continue
    value = fn(np.asarray(sd[src]))
    if value.shape != targets[dst].shape:
      mismatched.append(f"{src}: file {tuple(sd[src].shape)} -> {value.shape}, "
                        f"model expects {targets[dst].shape}")
      continue
    try:
      values[dst] = validate.float_tensor(src, value, allow_nonfinite=allow_nonfinite)
    except validate.TensorValueError as e:
      mismatched.append(str(e))
  used = {src for src, _, _ in rows}
  unexpected = sorted(k for k in sd if k not in used and not k.endswith(IGNORED_SUFFIXES))
  if missing or unexpected or mismatched:
    lines = [f"state dict does not match ResNet(block={config.block_type!r}, "
             f"stages={config.stages}, width={config.width}, num_classes={config.num_classes}):"]
    for name, items in (("missing", missing), ("unexpected", unexpected),
                        ("shape/dtype mismatch", mismatched)):
      if items:
        lines.append(f"  {name} ({len(items)}): " + ", ".join(items))
    raise ConversionError("\n".join(lines))

  pure = nnx.to_pure_dict(abstract_state)
  for dst, value in values.items():
    _set_nested(pure, dst, jax.numpy.asarray(value))
  nnx.replace_by_pure_dict(abstract_state, pure)
  return nnx.merge(graphdef, abstract_state)


def infer_config(sd: dict[str, np.ndarray], **overrides) -> resnet.ResNetConfig:
  """Reads block type, stage sizes, width and class count from torchvision key names/shapes.

  Args:
    sd: torchvision ResNet state dict.
    **overrides: further ResNetConfig fields (e.g. resize, crop).

  Returns:
    a ResNetConfig; `depth` is the standard one when the layout matches a torchvision
    variant, else the layer count with explicit `stage_sizes` and `block`.
  """
  for key in ("conv1.weight", "fc.weight"):
    if key not in sd:
      raise ConversionError(f"cannot infer a ResNet layout: key {key!r} is missing")
  block_idx: dict[int, set[int]] = {}
  for k in sd:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      block_idx.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  if sorted(block_idx) != [1, 2, 3, 4]:
    raise ConversionError(f"cannot infer a ResNet layout: found stages {sorted(block_idx)}, "
                          "expected layer1..layer4")
  stages = []
  for s in range(1, 5):
    if block_idx[s] != set(range(len(block_idx[s]))):
      raise ConversionError(f"layer{s} block indices are not 0..n-1: {sorted(block_idx[s])}")
    stages.append(len(block_idx[s]))
  block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
  width = int(sd["conv1.weight"].shape[0])
  num_classes = int(sd["fc.weight"].shape[0])
  for depth, (b, st) in resnet.DEPTHS.items():
    if b == block and tuple(st) == tuple(stages):
      return resnet.ResNetConfig(depth=depth, width=width, num_classes=num_classes, **overrides)
  depth = (3 if block == "bottleneck" else 2) * sum(stages) + 2
  return resnet.ResNetConfig(depth=depth, width=width, num_classes=num_classes,
                             stage_sizes=tuple(stages), block=block, **overrides)


def config_for_arch(arch: str, sd: dict[str, np.ndarray], **overrides) -> resnet.ResNetConfig:
  """The config of a named torchvision arch ('resnet50', ...); the class count comes from fc."""
  if arch not in ARCHS:
    raise ConversionError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
  num_classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else 1000
  return resnet.ResNetConfig(depth=ARCHS[arch], num_classes=num_classes, **overrides)


def convert_file(pth: str | pathlib.Path, out: str | pathlib.Path, arch: str | None = None,
                 resize: int | None = 256, crop: int | None = 224, *,
                 allow_nonfinite: bool = False) -> resnet.ResNet:
  """Reads a torchvision .pth, converts it and saves a linkjax checkpoint to `out`.

  Args:
    pth: torch.save'd state dict.
    out: checkpoint directory to write.
    arch: 'resnet50' etc., or None to infer the layout from the keys.
    resize, crop: the eval transform recorded in the config (torchvision's IMAGENET1K_V1
      weights: 256/224; IMAGENET1K_V2: 232/224).
    allow_nonfinite: convert tensors holding NaN/inf instead of refusing them.

  Returns:
    the converted ResNet.
  """
  sd = torch_pickle.load_state_dict(pth)
  geometry = {"resize": resize, "crop": crop}
  config = config_for_arch(arch, sd, **geometry) if arch else infer_config(sd, **geometry)
  logging.info("converting %s as %s", pth, config)
  model = convert_state_dict(sd, config, allow_nonfinite=allow_nonfinite)
  checkpoint.save(out, model)
  return model


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module never claims flag names.
  flags.DEFINE_string("arch", None, f"torchvision architecture, one of {sorted(ARCHS)}; "
                      "default: inferred from the state dict's keys and shapes.")
  flags.DEFINE_string("pth", None, "torch.save'd state dict (.pth), e.g. resnet50-0676ba61.pth.")
  flags.DEFINE_string("out", None, "output checkpoint directory (replaced if it exists).")
  flags.DEFINE_integer("resize", 256, "shorter side of the classifier's eval transform, in "
                       "pixels, stored in the config (torchvision V1 weights: 256, V2: 232).")
  flags.DEFINE_integer("crop", 224, "centre crop of the eval transform, in pixels.")
  flags.DEFINE_bool("allow_nonfinite", False, "convert tensors that hold NaN or inf (refused by "
                    "default).")
  flags.mark_flags_as_required(["pth", "out"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  logging.info("flags: arch=%s pth=%s out=%s resize=%d crop=%d", f.arch, f.pth, f.out,
               f.resize, f.crop)
  convert_file(f.pth, f.out, f.arch, resize=f.resize, crop=f.crop,
               allow_nonfinite=f.allow_nonfinite)
  logging.info("wrote %s", f.out)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
