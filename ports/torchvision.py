r"""torchvision classifier state dicts -> linkjax checkpoints, without torch.

    python -m ports.torchvision --arch=resnet50 --pth=resnet50-0676ba61.pth --out=ckpt/resnet50
    python -m ports.torchvision --pth=vgg16-397923af.pth --out=ckpt/vgg16 --r_layer=penultimate

Families: ResNet (resnet18..152), VGG (vgg11..19, `_bn`), AlexNet, DenseNet (densenet121..201).
Each conversion is an explicit key table (`key_table`, per family in `ports.torchvision_tables`):
one row per target parameter naming its source key and layout helper. Legacy key names (DenseNet's
2017 `norm.1`/`conv.1`/...) are renamed first by an explicit per-family step. Every source key
must then be consumed or be on `IGNORED_SUFFIXES`; every target parameter must be filled; shapes
and dtypes must match. Otherwise a single ConversionError lists all missing, unexpected and
mismatched keys. Without `--arch`, the family and its layout (ResNet block type/stage sizes/width;
VGG convs and BatchNorm; AlexNet widths; DenseNet blocks, growth rate, stem width) and the class
count are inferred from the keys and shapes (`infer_config`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from flax import nnx

from linkjax import checkpoint, cli, models
from ports import torch_pickle, validate
from ports import torchvision_tables as tables
from ports.torchvision_tables import (  # noqa: F401
  ARCHS,
  ConversionError,
  Row,
  config_for_arch,
  identity,
  linear_to_kernel,
  oihw_to_hwio,
)

# Buffers torch keeps for training only; they have no counterpart in an inference model.
IGNORED_SUFFIXES = ("num_batches_tracked",)
R_LAYERS = models.R_LAYERS


def key_table(config: Any) -> list[Row]:
  """(source key, target state path, layout helper) for every parameter of the model that
  `config` (ResNetConfig, VGGConfig, AlexNetConfig or DenseNetConfig) describes."""
  return tables.family_of_config(config).key_table(config)


def _abstract(config: Any) -> tuple[nnx.GraphDef, nnx.State]:
  model_cls, _ = models.ARCHITECTURES[models.arch_of(config)].classes()
  # eval_shape: no weights are drawn (random init compiles one kernel per shape: slow on CPU).
  return nnx.split(nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0))))


def source_shapes(config: Any) -> dict[str, tuple[int, ...]]:
  """The torchvision state dict layout {key: shape} that `config` expects (current key names,
  without buffers on IGNORED_SUFFIXES)."""
  _, abstract_state = _abstract(config)
  shapes = {tuple(p): v.get_value().shape for p, v in nnx.to_flat_state(abstract_state)}
  return {src: tuple(tables.SOURCE_SHAPE[fn](shapes[dst])) for src, dst, fn in key_table(config)}


def _set_nested(tree: dict, path: Sequence, value: Any) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def _checked_float32(key: str, value: np.ndarray, allow_nonfinite: bool
                     ) -> tuple[np.ndarray | None, str | None]:
  """The one place every source array is checked and cast (`validate.float_tensor`): (float32
  array, None) or (None, problem)."""
  try:
    return validate.float_tensor(key, value, allow_nonfinite=allow_nonfinite), None
  except validate.TensorValueError as e:
    return None, str(e)


def _describe(config: Any) -> str:
  fields = {k: v for k, v in vars(config).items() if k not in ("resize", "crop", "r_layer")}
  return f"{type(config).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def convert_state_dict(sd: dict[str, np.ndarray], config: Any, *,
                       allow_nonfinite: bool = False) -> nnx.Module:
  """Builds a classifier from a torchvision state dict.

  Args:
    sd: {torch key: array}, e.g. from `ports.torch_pickle.load_state_dict`; legacy key names
      of the family (DenseNet's `norm.1`, ...) are accepted.
    config: target architecture (a ResNet/VGG/AlexNet/DenseNet config).
    allow_nonfinite: accept NaN/inf values (refused by default).

  Returns:
    the model with all parameters and BatchNorm statistics from `sd` (float32).

  Raises:
    ConversionError: listing every missing, unexpected and shape-mismatched key, and every
      tensor that is not float32/float16/bfloat16 or not finite, at once.
  """
  family = tables.family_of_config(config)
  graphdef, abstract_state = _abstract(config)
  targets = {tuple(path): var.get_value() for path, var in nnx.to_flat_state(abstract_state)}
  rows = family.key_table(config)
  table_targets = {dst for _, dst, _ in rows}
  # The table must cover the model exactly; a mismatch here is a bug in this file, not the input.
  if table_targets != set(targets):
    raise AssertionError(f"key table out of sync with the model: "
                         f"{sorted(map(str, set(targets) ^ table_targets))}")

  # Explicit renaming of legacy names; `origin` keeps the file's name for error messages.
  renames = family.renames(sd)
  unexpected = [f"{old} (old-style name of {new}, also present)"
                for old, new in renames.items() if new in sd]
  origin = {renames.get(k, k): k for k in sd if not (k in renames and renames[k] in sd)}

  def name(key: str) -> str:
    return key if origin[key] == key else f"{key} (file: {origin[key]})"

  missing, mismatched, values = [], [], {}
  for src, dst, fn in rows:
    if src not in origin:
      missing.append(src)
      continue
    value, problem = _checked_float32(name(src), np.asarray(sd[origin[src]]), allow_nonfinite)
    if problem is not None:
      mismatched.append(problem)
      continue
    value = fn(value)
    if value.shape != targets[dst].shape:
      mismatched.append(f"{name(src)}: file {tuple(sd[origin[src]].shape)} -> {value.shape}, "
                        f"model expects {targets[dst].shape}")
      continue
    values[dst] = value
  used = {src for src, _, _ in rows}
  unexpected += sorted(origin[k] for k in origin
                       if k not in used and not k.endswith(IGNORED_SUFFIXES))
  if missing or unexpected or mismatched:
    lines = [f"state dict does not match {_describe(config)}:"]
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape/dtype mismatch", mismatched)):
      if items:
        lines.append(f"  {label} ({len(items)}): " + ", ".join(items))
    raise ConversionError("\n".join(lines))

  pure = nnx.to_pure_dict(abstract_state)
  for dst, value in values.items():
    _set_nested(pure, dst, jax.numpy.asarray(value))
  nnx.replace_by_pure_dict(abstract_state, pure)
  return nnx.merge(graphdef, abstract_state)


def infer_config(sd: dict[str, np.ndarray], **overrides) -> Any:
  """The family (ResNet, VGG, AlexNet, DenseNet) and its layout read from key names/shapes.

  Args:
    sd: torchvision state dict (legacy DenseNet key names accepted).
    **overrides: further config fields (resize, crop, r_layer).

  Returns:
    the config; for a ResNet, `depth` is the standard one when the layout matches a
    torchvision variant, else the layer count with explicit `stage_sizes` and `block`.
  """
  family = tables.detect_family(sd.keys())
  renames = family.renames(sd)
  return family.infer({renames.get(k, k): v for k, v in sd.items()}, **overrides)


def convert_file(pth: str | pathlib.Path, out: str | pathlib.Path, arch: str | None = None,
                 resize: int | None = 256, crop: int | None = 224,
                 r_layer: str = "original", *, allow_nonfinite: bool = False) -> nnx.Module:
  """Reads a torchvision .pth, converts it and saves a linkjax checkpoint to `out`.

  Args:
    pth: torch.save'd state dict.
    out: checkpoint directory to write.
    arch: 'resnet50', 'vgg16_bn', 'alexnet', 'densenet201', ... (`ARCHS`), or None to infer the
      family and layout from the keys.
    resize, crop: the eval transform recorded in the config (torchvision's IMAGENET1K_V1
      weights: 256/224; ResNet IMAGENET1K_V2: 232/224).
    r_layer: the representation layer R recorded in the config: 'original' (the reference's:
      all children but the last) or 'penultimate' (the last linear layer's input).
    allow_nonfinite: convert tensors holding NaN/inf instead of refusing them.

  Returns:
    the converted model.
  """
  sd = torch_pickle.load_state_dict(pth)
  fields = {"resize": resize, "crop": crop, "r_layer": r_layer}
  config = config_for_arch(arch, sd, **fields) if arch else infer_config(sd, **fields)
  logging.info("converting %s as %s", pth, config)
  model = convert_state_dict(sd, config, allow_nonfinite=allow_nonfinite)
  checkpoint.save(out, model)
  return model


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module never claims flag names.
  flags.DEFINE_string("arch", None, f"torchvision architecture, one of {sorted(ARCHS)}; "
                      "default: inferred from the state dict's keys and shapes.")
  flags.DEFINE_string("pth", None, "torch.save'd state dict (.pth), e.g. resnet50-0676ba61.pth.")
  flags.DEFINE_string("out", None, "output checkpoint directory (an existing linkjax model checkpoint is "
                      "replaced; any other existing folder is refused).")
  flags.DEFINE_integer("resize", 256, "shorter side of the classifier's eval transform, in "
                       "pixels, stored in the config (torchvision V1 weights: 256, V2: 232).")
  flags.DEFINE_integer("crop", 224, "centre crop of the eval transform, in pixels.")
  flags.DEFINE_enum("r_layer", "original", R_LAYERS, "the representation layer R stored in "
                    "the config: 'original' (the reference's: the flattened output of all "
                    "children but the last, e.g. 25 088-d for VGG16) or 'penultimate' (the "
                    "input of the last linear layer, e.g. 4 096-d). Both are the 2048-d pooled "
                    "features for a ResNet-50.")
  flags.DEFINE_bool("allow_nonfinite", False, "convert tensors that hold NaN or inf (refused by "
                    "default).")
  flags.mark_flags_as_required(["pth", "out"])


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  logging.info("flags: arch=%s pth=%s out=%s resize=%d crop=%d r_layer=%s", f.arch, f.pth, f.out,
               f.resize, f.crop, f.r_layer)
  convert_file(f.pth, f.out, f.arch, resize=f.resize, crop=f.crop, r_layer=f.r_layer,
               allow_nonfinite=f.allow_nonfinite)
  logging.info("wrote %s", f.out)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
