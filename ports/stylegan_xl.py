"""Converts a StyleGAN-XL network pickle (official format) to a linkjax checkpoint, without torch.

    python -m ports.stylegan_xl --pkl=imagenet256.pkl --out=checkpoints/sgxl256 [--net=G_ema]

Safety: the pickle is read by `ports.torch_pickle.load_network_pickle`, a restricted unpickler.
Persistent network objects stay data (class name + `__dict__`); their embedded `module_src` is
never executed; globals from system modules (os, posix, subprocess, builtins.eval, ...) are
refused; other unknown globals (timm classes or dill functions inside `D`) become inert stubs,
and only the `--net` entry is ever looked at. Storage locations ('cuda:0') are ignored.

Conversion: the layer geometry is read from the stored attributes (never recomputed), and every
tensor goes through an explicit key table (identity names, torch layout kept): every source
parameter/buffer is consumed or on `IGNORED_SOURCE_KEYS`, every target variable is filled, and
any mismatch raises one error that lists missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linkjax.models import stylegan_xl as sx
from ports import torch_pickle
from ports.torch_pickle import ForbiddenGlobalError, PersistentObject, TorchFileError, TorchModule

__all__ = ["ConversionError", "ForbiddenGlobalError", "TorchFileError", "convert_network_pickle",
           "config_from_generator", "source_tensors", "main"]

# Source keys deliberately not converted (regexes on the dotted key). None today: every
# parameter and buffer of a SuperresGenerator has a target.
IGNORED_SOURCE_KEYS: tuple[str, ...] = ()

_GENERATOR_CLASSES = ("SuperresGenerator", "Generator")


class ConversionError(ValueError):
  """The pickle is readable but is not a (supported) StyleGAN-XL generator, or keys mismatch."""


def _expect(obj: Any, cls_name: str | tuple[str, ...], where: str) -> PersistentObject:
  names = (cls_name,) if isinstance(cls_name, str) else cls_name
  if not isinstance(obj, PersistentObject) or obj.class_name not in names:
    got = obj.class_name if isinstance(obj, (PersistentObject, TorchModule)) else type(obj).__name__
    raise ConversionError(f"{where} is a {got}, expected {' or '.join(names)}: "
                          "not a StyleGAN-XL (StyleGAN3-based) generator")
  return obj


def _modules(obj: PersistentObject | TorchModule) -> dict[str, Any]:
  return dict(obj.state.get("_modules", {}))


def _attr(obj: PersistentObject, name: str, where: str) -> Any:
  if name not in obj.state:
    raise ConversionError(f"{where} lacks the attribute {name!r}")
  return obj.state[name]


def _size(v: Any) -> tuple[int, int]:
  a = np.broadcast_to(np.asarray(v), (2,))
  return int(a[0]), int(a[1])


def _check_fc(fc: PersistentObject, where: str, *, lr: float, activation: str) -> None:
  _expect(fc, "FullyConnectedLayer", where)
  if _attr(fc, "activation", where) != activation:
    raise ConversionError(f"{where}: activation {fc.state['activation']!r}, expected {activation!r}")
  in_f = int(_attr(fc, "in_features", where))
  if not np.isclose(float(_attr(fc, "bias_gain", where)), lr) or \
     not np.isclose(float(_attr(fc, "weight_gain", where)), lr / np.sqrt(in_f)):
    raise ConversionError(f"{where}: gains {fc.state['weight_gain']}, {fc.state['bias_gain']} do "
                          f"not match lr_multiplier {lr}")


def config_from_generator(G: PersistentObject) -> sx.StyleGANXLConfig:
  """Reads the StyleGANXLConfig (all per-layer geometry) from a generator's stored attributes."""
  _expect(G, _GENERATOR_CLASSES, "the generator")
  mods = _modules(G)
  if "mapping" not in mods or "synthesis" not in mods:
    raise ConversionError("the generator has no mapping/synthesis submodules")
  mapping = _expect(mods["mapping"], "MappingNetwork", "G.mapping")
  synthesis = _expect(mods["synthesis"], "SynthesisNetwork", "G.synthesis")
  mmods = _modules(mapping)
  embed = mmods.get("embed")
  if not isinstance(embed, TorchModule) or embed.class_name != "Embedding":
    raise ConversionError("G.mapping.embed is not a torch.nn.Embedding: not a StyleGAN-XL "
                          "class-conditional mapping network")
  num_layers = int(_attr(mapping, "num_layers", "G.mapping"))
  lr = float(_attr(mmods.get("fc0"), "bias_gain", "G.mapping.fc0")) if isinstance(
      mmods.get("fc0"), PersistentObject) else None
  if lr is None:
    raise ConversionError("G.mapping has no fc0")
  _check_fc(mmods.get("embed_proj"), "G.mapping.embed_proj", lr=1.0, activation="lrelu")
  for i in range(num_layers):
    _check_fc(mmods.get(f"fc{i}"), f"G.mapping.fc{i}", lr=lr, activation="lrelu")

  smods = _modules(synthesis)
  inp = _expect(smods.get("input"), "SynthesisInput", "G.synthesis.input")
  _check_fc(_modules(inp).get("affine"), "G.synthesis.input.affine", lr=1.0, activation="linear")
  input_spec = sx.InputSpec(channels=int(_attr(inp, "channels", "input")),
                            size=_size(_attr(inp, "size", "input")),
                            sampling_rate=float(_attr(inp, "sampling_rate", "input")),
                            bandwidth=float(_attr(inp, "bandwidth", "input")))
  names = list(_attr(synthesis, "layer_names", "G.synthesis"))
  extra = set(smods) - set(names) - {"input"}
  if extra:
    raise ConversionError(f"G.synthesis has children not in layer_names: {sorted(extra)}")
  layers = []
  for i, name in enumerate(names):
    where = f"G.synthesis.{name}"
    L = _expect(smods.get(name), "SynthesisLayer", where)
    _check_fc(_modules(L).get("affine"), where + ".affine", lr=1.0, activation="linear")
    a = lambda k: _attr(L, k, where)  # noqa: E731
    clamp = a("conv_clamp")
    layers.append(sx.LayerSpec(
        name=name, w_idx=i + 1,  # SynthesisNetwork.forward: input <- ws[0], layer i <- ws[i+1]
        is_torgb=bool(a("is_torgb")), is_critically_sampled=bool(a("is_critically_sampled")),
        use_fp16=bool(a("use_fp16")), in_channels=int(a("in_channels")),
        out_channels=int(a("out_channels")), in_size=_size(a("in_size")),
        out_size=_size(a("out_size")), in_sampling_rate=float(a("in_sampling_rate")),
        out_sampling_rate=float(a("out_sampling_rate")),
        tmp_sampling_rate=float(a("tmp_sampling_rate")), in_cutoff=float(a("in_cutoff")),
        out_cutoff=float(a("out_cutoff")), in_half_width=float(a("in_half_width")),
        out_half_width=float(a("out_half_width")), conv_kernel=int(a("conv_kernel")),
        conv_clamp=None if clamp is None else float(clamp), up_factor=int(a("up_factor")),
        down_factor=int(a("down_factor")), up_taps=int(a("up_taps")),
        down_taps=int(a("down_taps")), down_radial=bool(a("down_radial")),
        padding=tuple(int(p) for p in torch_pickle_padding(a("padding")))))
  num_ws = int(_attr(G, "num_ws", "the generator"))
  for where, obj in (("G.mapping", mapping), ("G.synthesis", synthesis)):
    if int(_attr(obj, "num_ws", where)) != num_ws:
      raise ConversionError(f"{where}.num_ws != G.num_ws ({num_ws})")
  if len(names) + 1 != num_ws:
    raise ConversionError(f"{len(names)} synthesis layers + input do not match num_ws={num_ws}")
  try:
    return sx.StyleGANXLConfig(
        z_dim=int(_attr(mapping, "z_dim", "G.mapping")),
        w_dim=int(_attr(mapping, "w_dim", "G.mapping")),
        c_dim=int(_attr(mapping, "c_dim", "G.mapping")),
        embed_dim=int(_attr(embed, "embedding_dim", "G.mapping.embed")),
        num_ws=num_ws, img_resolution=int(_attr(G, "img_resolution", "the generator")),
        img_channels=int(_attr(G, "img_channels", "the generator")),
        mapping_layers=num_layers, mapping_lr_multiplier=lr,
        output_scale=float(_attr(synthesis, "output_scale", "G.synthesis")),
        input=input_spec, layers=tuple(layers))
  except ValueError as e:
    raise ConversionError(f"unsupported generator: {e}") from e


def torch_pickle_padding(p: Any) -> tuple[int, int, int, int]:
  """The stored `padding` attribute ([x0, x1, y0, y1]) as four ints."""
  vals = [int(v) for v in np.asarray(p).reshape(-1)]
  if len(vals) != 4:
    raise ConversionError(f"unexpected padding {p!r}")
  return tuple(vals)  # type: ignore[return-value]


def source_tensors(obj: PersistentObject | TorchModule, prefix: str = "") -> dict[str, Any]:
  """Flattens a module tree's `_parameters` and `_buffers` to {dotted key: array or None}."""
  out: dict[str, Any] = {}
  for group in ("_parameters", "_buffers"):
    for k, v in dict(obj.state.get(group, {})).items():
      out[prefix + k] = v
  for k, child in _modules(obj).items():
    if child is None:
      continue
    if not isinstance(child, (PersistentObject, TorchModule)):
      raise ConversionError(f"submodule {prefix + k} is a {type(child).__name__}")
    out.update(source_tensors(child, prefix + k + "."))
  return out


def _fill(config: sx.StyleGANXLConfig, src: dict[str, Any]) -> sx.StyleGANXL:
  abstract = nnx.eval_shape(lambda: sx.StyleGANXL(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  ignored = {k for k in src if any(re.fullmatch(p, k) for p in IGNORED_SOURCE_KEYS)}
  # A None buffer is the reference's identity filter (taps == 1): the target has no variable.
  absent = {k for k, v in src.items() if v is None}
  table = {k: v for k, v in src.items() if k not in ignored and k not in absent}
  missing, bad_shape, filled = [], [], []
  for path, var in flat:
    key = ".".join(str(p) for p in path)
    if key not in table:
      missing.append(key)
      continue
    arr = np.asarray(table.pop(key))
    if arr.dtype.kind != "f":
      bad_shape.append(f"{key}: dtype {arr.dtype}")
      continue
    if tuple(arr.shape) != tuple(var.shape):
      bad_shape.append(f"{key}: source {arr.shape} vs target {tuple(var.shape)}")
      continue
    filled.append((path, var.replace(jnp.asarray(arr, jnp.float32))))
  unexpected = sorted(table)
  if missing or unexpected or bad_shape:
    raise ConversionError(
        "key table mismatch:\n  missing (target not filled): " + ", ".join(missing or ["-"])
        + "\n  unexpected (source not consumed): " + ", ".join(unexpected or ["-"])
        + "\n  wrong shape/dtype: " + ", ".join(bad_shape or ["-"]))
  new_state = nnx.from_flat_state(filled)
  return nnx.merge(graphdef, new_state)


def convert_network_pickle(path: str | pathlib.Path, net: str = "G_ema") -> sx.StyleGANXL:
  """Reads a StyleGAN-XL pickle (official format) into a StyleGANXL model, without torch.

  Args:
    path: the .pkl file (a dict with 'G', 'G_ema', 'D', ...).
    net: which entry to convert: 'G_ema' (default, the one used for sampling) or 'G'.
  Returns:
    StyleGANXL with the stored weights, buffers and per-layer geometry.
  Raises:
    TorchFileError: truncated or unreadable file.
    ForbiddenGlobalError: the pickle names a global from a system module (os.system, eval, ...).
    ConversionError: not a StyleGAN-XL generator pickle, or the key table does not match.
  """
  data = torch_pickle.load_network_pickle(path).data
  if not isinstance(data, dict):
    raise ConversionError(f"{path} holds a {type(data).__name__}, not a network-pickle dict")
  if net not in data:
    raise ConversionError(f"{path} has no {net!r} entry (keys: {sorted(map(str, data))}): "
                          "not a StyleGAN-XL network pickle")
  G = data[net]
  config = config_from_generator(G)
  return _fill(config, source_tensors(G))


def main(argv: list[str]) -> None:
  from absl import logging
  from linkjax import checkpoint
  del argv
  logging.info("converting %s[%s] -> %s", FLAGS.pkl, FLAGS.net, FLAGS.out)
  model = convert_network_pickle(FLAGS.pkl, FLAGS.net)
  checkpoint.save(FLAGS.out, model)
  c = model.config
  logging.info("wrote %s: %d px, num_ws %d, %d layers, %d parameters", FLAGS.out,
               c.img_resolution, c.num_ws, len(c.layers),
               sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("pkl", None, "StyleGAN-XL network pickle (official format, e.g. "
                      "imagenet256.pkl). Read without torch; embedded code is never executed.")
  flags.DEFINE_string("out", None, "Output checkpoint directory (overwritten).")
  flags.DEFINE_enum("net", "G_ema", ["G_ema", "G"], "Which generator entry to convert.")
  flags.mark_flags_as_required(["pkl", "out"])
  FLAGS = flags.FLAGS
  app.run(main)
