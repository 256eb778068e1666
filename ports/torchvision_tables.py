"""Key tables, layout inference and arch names of the torchvision classifier families.

One `Family` per registered classifier architecture ('resnet', 'vgg', 'alexnet', 'densenet'):
  * `key_table(config)`: one row (source key, target state path, layout helper) per target
    parameter, written out explicitly; the Flax modules carry torchvision's names, so the rows
    are near identity (`features.3.weight` -> ('features', 3, 'kernel')).
  * `renames(keys)`: an explicit renaming of legacy source keys ({old: new}), applied before the
    table; DenseNet's 2017 checkpoints name `norm.1`, `conv.1`, `norm.2`, `conv.2` what
    torchvision now calls `norm1`, `conv1`, ... (torchvision rewrites them with this very regex in
    `densenet._load_state_dict`). Renamed keys still go through the coverage check.
  * `infer(sd, **overrides)`: the config read from key names and shapes.
  * `archs`: torchvision's model names ('vgg16_bn', ...) -> config fields.
The conversion loop itself (coverage, shapes, dtypes) is `ports.torchvision.convert_state_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

import numpy as np

from linkjax.models import alexnet, densenet, resnet, vgg


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


# Target shape -> source shape, per layout helper (for `source_shapes`).
SOURCE_SHAPE: dict[Callable, Callable[[tuple], tuple]] = {
    oihw_to_hwio: lambda s: (s[3], s[2], s[0], s[1]),
    linear_to_kernel: lambda s: (s[1], s[0]),
    identity: lambda s: s,
}

Row = tuple[str, tuple, Callable[[np.ndarray], np.ndarray]]


def conv_rows(src: str, dst: tuple, bias: bool = False) -> list[Row]:
  rows = [(f"{src}.weight", dst + ("kernel",), oihw_to_hwio)]
  return rows + ([(f"{src}.bias", dst + ("bias",), identity)] if bias else [])


def bn_rows(src: str, dst: tuple) -> list[Row]:
  return [(f"{src}.weight", dst + ("scale",), identity),
          (f"{src}.bias", dst + ("bias",), identity),
          (f"{src}.running_mean", dst + ("mean",), identity),
          (f"{src}.running_var", dst + ("var",), identity)]


def linear_rows(src: str, dst: tuple) -> list[Row]:
  return [(f"{src}.weight", dst + ("kernel",), linear_to_kernel),
          (f"{src}.bias", dst + ("bias",), identity)]


def _require(sd: Collection[str], keys: Iterable[str], family: str) -> None:
  missing = [k for k in keys if k not in sd]
  if missing:
    raise ConversionError(f"cannot infer a {family} layout: key(s) {missing} missing")


def _pool_size(in_features: int, channels: int, key: str) -> int:
  p = math.isqrt(in_features // channels) if in_features % channels == 0 else 0
  if p * p * channels != in_features:
    raise ConversionError(f"{key}: {in_features} inputs are not {channels} channels × p²")
  return p


def _num_classes(sd: dict[str, np.ndarray], key: str) -> int:
  return int(sd[key].shape[0]) if key in sd else 1000


# --- ResNet ------------------------------------------------------------------------------------

def resnet_table(config: resnet.ResNetConfig) -> list[Row]:
  rows = conv_rows("conv1", ("conv1",)) + bn_rows("bn1", ("bn1",))
  n_convs = 3 if config.block_type == "bottleneck" else 2
  expansion = resnet.EXPANSION[config.block_type]
  cin = config.width
  for i, n in enumerate(config.stages):
    planes = config.width * 2**i
    for j in range(n):
      src, dst = f"layer{i + 1}.{j}", (f"layer{i + 1}", j)
      for c in range(1, n_convs + 1):
        rows += conv_rows(f"{src}.conv{c}", dst + (f"conv{c}",))
        rows += bn_rows(f"{src}.bn{c}", dst + (f"bn{c}",))
      stride = 2 if (i > 0 and j == 0) else 1
      if stride != 1 or cin != planes * expansion:
        rows += conv_rows(f"{src}.downsample.0", dst + ("downsample", 0))
        rows += bn_rows(f"{src}.downsample.1", dst + ("downsample", 1))
      cin = planes * expansion
  return rows + linear_rows("fc", ("fc",))


def resnet_infer(sd: dict[str, np.ndarray], **overrides) -> resnet.ResNetConfig:
  _require(sd, ("conv1.weight", "fc.weight"), "ResNet")
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


# --- VGG ---------------------------------------------------------------------------------------

def vgg_table(config: vgg.VGGConfig) -> list[Row]:
  rows, idx = [], 0
  for v in config.layers:  # the Sequential indices of torchvision's make_layers
    if v == "M":
      idx += 1
      continue
    rows += conv_rows(f"features.{idx}", ("features", idx), bias=True)
    if config.batch_norm:
      rows += bn_rows(f"features.{idx + 1}", ("features", idx + 1))
    idx += 3 if config.batch_norm else 2
  for i in (0, 3, 6):  # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    rows += linear_rows(f"classifier.{i}", ("classifier", i))
  return rows


def vgg_infer(sd: dict[str, np.ndarray], **overrides) -> vgg.VGGConfig:
  """Convs from `features.N.weight` (4-D), BatchNorm from `running_mean` keys; the pools are the
  index gaps. One trailing pool is assumed: it has no key, and every torchvision cfg ends so."""
  _require(sd, ("classifier.0.weight", "classifier.6.weight"), "VGG")
  convs = sorted(int(m.group(1)) for k in sd
                 if (m := re.fullmatch(r"features\.(\d+)\.weight", k)) and np.ndim(sd[k]) == 4)
  if not convs:
    raise ConversionError("cannot infer a VGG layout: no conv weights features.N.weight")
  bn = any(re.fullmatch(r"features\.\d+\.running_mean", k) for k in sd)
  layers: list[int | str] = []
  idx = 0
  for c in convs:
    if c < idx:
      raise ConversionError(f"cannot infer a VGG layout: conv features.{c} overlaps the "
                            f"{'conv-BN-ReLU' if bn else 'conv-ReLU'} group before it")
    layers += ["M"] * (c - idx)
    layers.append(int(sd[f"features.{c}.weight"].shape[0]))
    idx = c + (3 if bn else 2)
  layers.append("M")
  w0 = sd["classifier.0.weight"]
  return vgg.VGGConfig(layers=tuple(layers), batch_norm=bn, hidden=int(w0.shape[0]),
                       pool_size=_pool_size(int(w0.shape[1]), int(layers[-2]),
                                            "classifier.0.weight"),
                       num_classes=int(sd["classifier.6.weight"].shape[0]), **overrides)


# --- AlexNet -----------------------------------------------------------------------------------

ALEXNET_CONVS = (0, 3, 6, 8, 10)


def alexnet_table(config: alexnet.AlexNetConfig) -> list[Row]:
  rows = []
  for i in ALEXNET_CONVS:
    rows += conv_rows(f"features.{i}", ("features", i), bias=True)
  for i in (1, 4, 6):  # Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
    rows += linear_rows(f"classifier.{i}", ("classifier", i))
  return rows


def alexnet_infer(sd: dict[str, np.ndarray], **overrides) -> alexnet.AlexNetConfig:
  keys = [f"features.{i}.weight" for i in ALEXNET_CONVS] + ["classifier.1.weight",
                                                             "classifier.6.weight"]
  _require(sd, keys, "AlexNet")
  widths = tuple(int(sd[f"features.{i}.weight"].shape[0]) for i in ALEXNET_CONVS)
  w1 = sd["classifier.1.weight"]
  return alexnet.AlexNetConfig(
      widths=widths, hidden=int(w1.shape[0]),
      pool_size=_pool_size(int(w1.shape[1]), widths[-1], "classifier.1.weight"),
      num_classes=int(sd["classifier.6.weight"].shape[0]), **overrides)


# --- DenseNet ----------------------------------------------------------------------------------

def densenet_table(config: densenet.DenseNetConfig) -> list[Row]:
  rows = conv_rows("features.conv0", ("features", "conv0"))
  rows += bn_rows("features.norm0", ("features", "norm0"))
  for i, n in enumerate(config.block_config):
    block = f"denseblock{i + 1}"
    for j in range(1, n + 1):
      src, dst = f"features.{block}.denselayer{j}", ("features", block, f"denselayer{j}")
      for part in ("1", "2"):
        rows += bn_rows(f"{src}.norm{part}", dst + (f"norm{part}",))
        rows += conv_rows(f"{src}.conv{part}", dst + (f"conv{part}",))
    if i < len(config.block_config) - 1:
      src, dst = f"features.transition{i + 1}", ("features", f"transition{i + 1}")
      rows += bn_rows(f"{src}.norm", dst + ("norm",)) + conv_rows(f"{src}.conv", dst + ("conv",))
  rows += bn_rows("features.norm5", ("features", "norm5"))
  return rows + linear_rows("classifier", ("classifier",))


# torchvision densenet._load_state_dict's pattern for the 2017 checkpoints' keys.
LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                                 r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def densenet_renames(keys: Iterable[str]) -> dict[str, str]:
  """{old-style key: current key} for `...denselayerJ.norm.1.weight` -> `...norm1.weight`."""
  out = {}
  for k in keys:
    m = LEGACY_DENSENET_KEY.match(k)
    if m:
      out[k] = m.group(1) + m.group(2)
  return out


def densenet_infer(sd: dict[str, np.ndarray], **overrides) -> densenet.DenseNetConfig:
  """Block sizes from the `denseblockK.denselayerJ` counts, growth rate and bn_size from the
  first layer's convs, num_init_features from conv0. `sd` must carry current key names."""
  first = "features.denseblock1.denselayer1"
  _require(sd, ("features.conv0.weight", f"{first}.conv1.weight", f"{first}.conv2.weight",
                "classifier.weight"), "DenseNet")
  layers: dict[int, set[int]] = {}
  for k in sd:
    m = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", k)
    if m:
      layers.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  if sorted(layers) != list(range(1, len(layers) + 1)):
    raise ConversionError(f"cannot infer a DenseNet layout: dense blocks {sorted(layers)} are "
                          "not denseblock1..N")
  for b, js in layers.items():
    if js != set(range(1, len(js) + 1)):
      raise ConversionError(f"denseblock{b} layers are not denselayer1..M: {sorted(js)}")
  growth = int(sd[f"{first}.conv2.weight"].shape[0])
  mid = int(sd[f"{first}.conv1.weight"].shape[0])
  if mid % growth:
    raise ConversionError(f"{first}.conv1 has {mid} outputs, not a multiple of the growth "
                          f"rate {growth}")
  return densenet.DenseNetConfig(
      growth_rate=growth, block_config=tuple(len(layers[b]) for b in sorted(layers)),
      num_init_features=int(sd["features.conv0.weight"].shape[0]), bn_size=mid // growth,
      num_classes=int(sd["classifier.weight"].shape[0]), **overrides)


# --- families ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Family:
  """How one registered classifier architecture is read from a torchvision state dict."""
  arch: str  # the name in linkjax.models.ARCHITECTURES
  config_cls: type
  key_table: Callable[[Any], list[Row]]
  infer: Callable[..., Any]
  archs: dict[str, dict[str, Any]]  # torchvision model name -> config fields
  classes_key: str  # the final linear layer's weight: [num_classes, in]
  renames: Callable[[Iterable[str]], dict[str, str]] = lambda keys: {}


FAMILIES: dict[str, Family] = {
    "resnet": Family("resnet", resnet.ResNetConfig, resnet_table, resnet_infer,
                     {f"resnet{d}": {"depth": d} for d in resnet.DEPTHS}, "fc.weight"),
    "vgg": Family("vgg", vgg.VGGConfig, vgg_table, vgg_infer,
                  {f"vgg{d}{s}": {"layers": layers, "batch_norm": bool(s)}
                   for d, layers in vgg.LAYERS.items() for s in ("", "_bn")},
                  "classifier.6.weight"),
    "alexnet": Family("alexnet", alexnet.AlexNetConfig, alexnet_table, alexnet_infer,
                      {"alexnet": {}}, "classifier.6.weight"),
    "densenet": Family("densenet", densenet.DenseNetConfig, densenet_table, densenet_infer,
                       {f"densenet{d}": {"growth_rate": g, "block_config": b,
                                         "num_init_features": f}
                        for d, (g, b, f) in densenet.DEPTHS.items()},
                       "classifier.weight", densenet_renames),
}
ARCHS: dict[str, str] = {name: fam.arch for fam in FAMILIES.values() for name in fam.archs}


def family_of_config(config: Any) -> Family:
  for fam in FAMILIES.values():
    if type(config) is fam.config_cls:
      return fam
  raise TypeError(f"{type(config).__name__} is not a torchvision classifier config")


def detect_family(keys: Collection[str]) -> Family:
  """The family whose characteristic keys `keys` holds."""
  if "conv1.weight" in keys and "fc.weight" in keys:
    return FAMILIES["resnet"]
  if "features.conv0.weight" in keys:
    return FAMILIES["densenet"]
  if "features.0.weight" in keys:
    # VGG's classifier starts with its Linear, AlexNet's with a Dropout.
    if "classifier.0.weight" in keys:
      return FAMILIES["vgg"]
    if "classifier.1.weight" in keys:
      return FAMILIES["alexnet"]
  raise ConversionError("cannot tell the architecture from the keys (expected torchvision's "
                        "ResNet, VGG, AlexNet or DenseNet names); first keys: "
                        f"{sorted(keys)[:8]}")


def config_for_arch(arch: str, sd: dict[str, np.ndarray], **overrides) -> Any:
  """The config of a named torchvision model ('resnet50', 'vgg16_bn', 'alexnet', 'densenet201');
  the class count comes from the final linear layer's weight when present (else 1000)."""
  if arch not in ARCHS:
    raise ConversionError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
  fam = FAMILIES[ARCHS[arch]]
  renamed = {fam.renames(sd).get(k, k): v for k, v in sd.items()}
  return fam.config_cls(**fam.archs[arch], num_classes=_num_classes(renamed, fam.classes_key),
                        **overrides)
