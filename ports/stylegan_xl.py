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

Validation before anything is written: every geometry attribute must be of the right type and
within what a StyleGAN-XL generator can have (the limits below, from the reference's
`training/networks_stylegan3_resetting.py`), consecutive layers must agree (channels, sizes,
sampling rates), the last layer must produce the image the generator declares, and each
layer's resampling factors, filter lengths and padding must be the ones the reference derives
from its sizes and rates. Every tensor must be float32, float16 or bfloat16 (stored as float32)
and finite unless `--allow_nonfinite`. Each failure is a ConversionError naming the layer and
the attribute or key.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from flax import nnx

from linkjax import checkpoint, cli
from linkjax.models import stylegan_xl as sx
from ports import torch_pickle, validate
from ports.torch_pickle import ForbiddenGlobalError, PersistentObject, TorchFileError, TorchModule
from ports.validate import short_repr

__all__ = ["ConversionError", "ForbiddenGlobalError", "TorchFileError", "convert_network_pickle",
           "config_from_generator", "source_tensors", "main"]

# Source keys deliberately not converted (regexes on the dotted key). None today: every
# parameter and buffer of a SuperresGenerator has a target.
IGNORED_SOURCE_KEYS: tuple[str, ...] = ()

_GENERATOR_CLASSES = ("SuperresGenerator", "Generator")

# What the reference generator can be. Sampling rates are powers of two up to img_resolution
# (<= 1024); the leaky ReLU runs at twice the higher rate, so up/down factors are small powers
# of two (4 where the rate doubles between layers, 8 allowed for x4 super-resolution heads), a
# filter has `filter_size` (6) taps per factor, feature maps add `margin_size` (10) pixels per
# side, channel_max is 512 (1024 for StyleGAN3-R-like configs), and ToRGB uses a 1x1 kernel.
RESOLUTIONS = tuple(2**k for k in range(4, 11))  # 16 .. 1024
MAX_IMG_CHANNELS = 4
MAX_SIZE = 2048  # feature-map side, margins included
MAX_SAMPLING_RATE = 2048  # includes tmp_sampling_rate = 2 * 1024
MAX_CHANNELS = 2048
MAX_LATENT_DIM = 4096  # z_dim, w_dim, embed_dim, FC widths
MAX_CLASSES = 100_000
MAX_MAPPING_LAYERS = 16
MAX_SYNTHESIS_LAYERS = 128
RESAMPLING_FACTORS = (1, 2, 4, 8)
MAX_TAPS_PER_FACTOR = 16
CONV_KERNELS = (1, 3, 5, 7)
_LAYER_NAME = re.compile(r"L\d{1,3}_\d{1,4}_\d{1,4}")


class ConversionError(ValueError):
  """The pickle is readable but is not a (supported) StyleGAN-XL generator, or keys mismatch."""


def _expect(obj: Any, cls_name: str | tuple[str, ...], where: str) -> PersistentObject:
  names = (cls_name,) if isinstance(cls_name, str) else cls_name
  if not isinstance(obj, PersistentObject) or not isinstance(obj.class_name, str) \
     or obj.class_name not in names:
    got = obj.class_name if isinstance(obj, (PersistentObject, TorchModule)) else type(obj).__name__
    raise ConversionError(f"{where} is a {short_repr(got, 80)}, expected {' or '.join(names)}: "
                          "not a StyleGAN-XL (StyleGAN3-based) generator")
  if not isinstance(obj.state, dict):
    raise ConversionError(f"{where}: its state is a {type(obj.state).__name__}, not a dict")
  return obj


def _modules(obj: PersistentObject | TorchModule) -> dict[str, Any]:
  mods = obj.state.get("_modules", {}) if isinstance(obj.state, dict) else None
  if not isinstance(mods, dict):
    raise ConversionError(f"{short_repr(obj.class_name, 80)}._modules is a "
                          f"{type(mods).__name__}, not a dict")
  return dict(mods)


def _attr(obj: PersistentObject, name: str, where: str) -> Any:
  if name not in obj.state:
    raise ConversionError(f"{where} lacks the attribute {name!r}")
  return obj.state[name]


def _bad(where: str, name: str, value: Any, expected: str) -> ConversionError:
  return ConversionError(f"{where}.{name} = {short_repr(value)}: expected {expected}")


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int(obj: PersistentObject, name: str, where: str, lo: int, hi: int) -> int:
  """An integer attribute in [lo, hi]."""
  v = _attr(obj, name, where)
  if not _is_int(v) or not lo <= int(v) <= hi:
    raise _bad(where, name, v, f"an integer in [{lo}, {hi}]")
  return int(v)


def _real(obj: PersistentObject, name: str, where: str, lo: float, hi: float) -> float:
  """A finite real attribute in (lo, hi]."""
  v = _attr(obj, name, where)
  if not (_is_int(v) or isinstance(v, (float, np.floating))) or not lo < float(v) <= hi:
    raise _bad(where, name, v, f"a finite number in ({lo:g}, {hi:g}]")
  return float(v)


def _flag(obj: PersistentObject, name: str, where: str) -> bool:
  v = _attr(obj, name, where)
  if not isinstance(v, (bool, np.bool_)):
    raise _bad(where, name, v, "a bool")
  return bool(v)


def _size(obj: PersistentObject, name: str, where: str) -> tuple[int, int]:
  """A (width, height) attribute: an int or 1-2 ints, broadcast as the reference does."""
  v = _attr(obj, name, where)
  if isinstance(v, np.ndarray) and v.ndim <= 1 and v.size in (1, 2) and v.dtype.kind in "iu":
    vals = [int(x) for x in v.reshape(-1)]
  elif isinstance(v, (list, tuple)) and len(v) in (1, 2) and all(_is_int(x) for x in v):
    vals = [int(x) for x in v]
  elif _is_int(v):
    vals = [int(v)]
  else:
    raise _bad(where, name, v, "an integer size or a [width, height] pair")
  w, h = vals[0], vals[-1]
  if not (1 <= w <= MAX_SIZE and 1 <= h <= MAX_SIZE):
    raise _bad(where, name, v, f"sides in [1, {MAX_SIZE}]")
  return w, h


def _check_fc(fc: Any, where: str, *, lr: float, activation: str) -> None:
  _expect(fc, "FullyConnectedLayer", where)
  act = _attr(fc, "activation", where)
  if not isinstance(act, str) or act != activation:
    raise _bad(where, "activation", act, repr(activation))
  in_f = _int(fc, "in_features", where, 1, 2 * MAX_LATENT_DIM)
  _int(fc, "out_features", where, 1, 2 * MAX_LATENT_DIM)
  bias_gain = _real(fc, "bias_gain", where, 0, 1)
  weight_gain = _real(fc, "weight_gain", where, 0, 1)
  if not np.isclose(bias_gain, lr) or not np.isclose(weight_gain, lr / np.sqrt(in_f)):
    raise ConversionError(f"{where}: gains {weight_gain:g}, {bias_gain:g} do not match "
                          f"lr_multiplier {lr:g}")


def config_from_generator(G: PersistentObject) -> sx.StyleGANXLConfig:
  """Reads the StyleGANXLConfig (all per-layer geometry) from a generator's stored attributes.

  Every attribute is type- and range-checked and the layers are checked against each other
  (see the module docstring) before the config is built.
  """
  _expect(G, _GENERATOR_CLASSES, "the generator")
  mods = _modules(G)
  if "mapping" not in mods or "synthesis" not in mods:
    raise ConversionError("the generator has no mapping/synthesis submodules")
  mapping = _expect(mods["mapping"], "MappingNetwork", "G.mapping")
  synthesis = _expect(mods["synthesis"], "SynthesisNetwork", "G.synthesis")
  mmods = _modules(mapping)
  embed = mmods.get("embed")
  if not isinstance(embed, TorchModule) or embed.class_name != "Embedding" \
     or not isinstance(embed.state, dict):
    raise ConversionError("G.mapping.embed is not a torch.nn.Embedding: not a StyleGAN-XL "
                          "class-conditional mapping network")
  num_layers = _int(mapping, "num_layers", "G.mapping", 1, MAX_MAPPING_LAYERS)
  if not isinstance(mmods.get("fc0"), PersistentObject):
    raise ConversionError("G.mapping has no fc0")
  lr = _real(_expect(mmods["fc0"], "FullyConnectedLayer", "G.mapping.fc0"), "bias_gain",
             "G.mapping.fc0", 0, 1)
  _check_fc(mmods.get("embed_proj"), "G.mapping.embed_proj", lr=1.0, activation="lrelu")
  for i in range(num_layers):
    _check_fc(mmods.get(f"fc{i}"), f"G.mapping.fc{i}", lr=lr, activation="lrelu")

  img_resolution = _int(G, "img_resolution", "the generator", 1, RESOLUTIONS[-1])
  if img_resolution not in RESOLUTIONS:
    raise _bad("the generator", "img_resolution", img_resolution,
               f"a power of two in [{RESOLUTIONS[0]}, {RESOLUTIONS[-1]}]")
  img_channels = _int(G, "img_channels", "the generator", 1, MAX_IMG_CHANNELS)

  smods = _modules(synthesis)
  inp = _expect(smods.get("input"), "SynthesisInput", "G.synthesis.input")
  _check_fc(_modules(inp).get("affine"), "G.synthesis.input.affine", lr=1.0, activation="linear")
  where = "G.synthesis.input"
  sampling_rate = _real(inp, "sampling_rate", where, 0, MAX_SAMPLING_RATE)
  input_spec = sx.InputSpec(channels=_int(inp, "channels", where, 1, MAX_CHANNELS),
                            size=_size(inp, "size", where), sampling_rate=sampling_rate,
                            bandwidth=_real(inp, "bandwidth", where, 0, MAX_SAMPLING_RATE))
  if not input_spec.bandwidth < sampling_rate / 2:  # the amplitude ramp divides by the gap
    raise _bad(where, "bandwidth", input_spec.bandwidth,
               f"less than half the sampling rate {sampling_rate:g}")
  names = _attr(synthesis, "layer_names", "G.synthesis")
  if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_SYNTHESIS_LAYERS \
     or not all(isinstance(n, str) and _LAYER_NAME.fullmatch(n) for n in names) \
     or len(set(names)) != len(names):
    raise _bad("G.synthesis", "layer_names", names,
               f"1 to {MAX_SYNTHESIS_LAYERS} distinct names like 'L0_36_512'")
  names = list(names)
  extra = set(smods) - set(names) - {"input"}
  if extra:
    raise ConversionError("G.synthesis has children not in layer_names: "
                          f"{short_repr(sorted(map(str, extra)))}")
  layers = []
  prev = ("G.synthesis.input", input_spec.channels, input_spec.size, sampling_rate)
  for i, name in enumerate(names):
    spec = _layer_spec(smods.get(name), f"G.synthesis.{name}", name, i + 1, prev,
                       is_last=i == len(names) - 1)
    layers.append(spec)
    prev = (f"G.synthesis.{name}", spec.out_channels, spec.out_size, spec.out_sampling_rate)
  last = layers[-1]
  if last.out_channels != img_channels or last.out_size != (img_resolution, img_resolution):
    raise ConversionError(
        f"G.synthesis.{last.name}: out_channels {last.out_channels}, out_size {last.out_size} "
        f"do not match the generator's img_channels {img_channels}, img_resolution "
        f"{img_resolution}")
  num_ws = _int(G, "num_ws", "the generator", 2, MAX_SYNTHESIS_LAYERS + 1)
  for where, obj in (("G.mapping", mapping), ("G.synthesis", synthesis)):
    if _int(obj, "num_ws", where, 2, MAX_SYNTHESIS_LAYERS + 1) != num_ws:
      raise ConversionError(f"{where}.num_ws != G.num_ws ({num_ws})")
  if len(names) + 1 != num_ws:
    raise ConversionError(f"{len(names)} synthesis layers + input do not match num_ws={num_ws}")
  try:
    return sx.StyleGANXLConfig(
        z_dim=_int(mapping, "z_dim", "G.mapping", 1, MAX_LATENT_DIM),
        w_dim=_int(mapping, "w_dim", "G.mapping", 1, MAX_LATENT_DIM),
        c_dim=_int(mapping, "c_dim", "G.mapping", 1, MAX_CLASSES),
        embed_dim=_int(embed, "embedding_dim", "G.mapping.embed", 1, MAX_LATENT_DIM),
        num_ws=num_ws, img_resolution=img_resolution, img_channels=img_channels,
        mapping_layers=num_layers, mapping_lr_multiplier=lr,
        output_scale=_real(synthesis, "output_scale", "G.synthesis", 0, 1),
        input=input_spec, layers=tuple(layers))
  except ValueError as e:
    raise ConversionError(f"unsupported generator: {e}") from e


def _layer_spec(L: Any, where: str, name: str, w_idx: int, prev: tuple, *,
                is_last: bool) -> sx.LayerSpec:
  """One SynthesisLayer's checked geometry; `prev` = (where, channels, size, rate) before it."""
  L = _expect(L, "SynthesisLayer", where)
  _check_fc(_modules(L).get("affine"), where + ".affine", lr=1.0, activation="linear")
  is_torgb = _flag(L, "is_torgb", where)
  if is_torgb != is_last:
    raise _bad(where, "is_torgb", is_torgb, f"{is_last} (only the last layer is ToRGB)")
  channels = {k: _int(L, k, where, 1, MAX_CHANNELS) for k in ("in_channels", "out_channels")}
  sizes = {k: _size(L, k, where) for k in ("in_size", "out_size")}
  rates = {k: _real(L, k, where, 0, MAX_SAMPLING_RATE)
           for k in ("in_sampling_rate", "out_sampling_rate", "tmp_sampling_rate")}
  bands = {k: _real(L, k, where, 0, MAX_SAMPLING_RATE)
           for k in ("in_cutoff", "out_cutoff", "in_half_width", "out_half_width")}
  for k, v in (("in_channels", prev[1]), ("in_size", prev[2]), ("in_sampling_rate", prev[3])):
    got = {**channels, **sizes, **rates}[k]
    if got != v:
      raise _bad(where, k, got, f"{v}, what {prev[0]} produces")
  kernel = _int(L, "conv_kernel", where, 1, max(CONV_KERNELS))
  if kernel not in CONV_KERNELS or (is_torgb and kernel != 1):
    raise _bad(where, "conv_kernel", kernel,
               "1 for ToRGB" if is_torgb else f"one of {CONV_KERNELS}")
  clamp = _attr(L, "conv_clamp", where)
  if clamp is not None:
    clamp = _real(L, "conv_clamp", where, 0, 1e6)
  tmp = rates["tmp_sampling_rate"]
  factors, taps = {}, {}
  for side, rate in (("up", rates["in_sampling_rate"]), ("down", rates["out_sampling_rate"])):
    f = _int(L, f"{side}_factor", where, 1, max(RESAMPLING_FACTORS))
    if f not in RESAMPLING_FACTORS or rate * f != tmp:
      raise _bad(where, f"{side}_factor", f, f"one of {RESAMPLING_FACTORS} with {side}-sampled "
                 f"rate tmp_sampling_rate {tmp:g}")
    t = _int(L, f"{side}_taps", where, 1, max(RESAMPLING_FACTORS) * MAX_TAPS_PER_FACTOR)
    if (f == 1 or is_torgb) and t != 1 or t != 1 and t % f:
      raise _bad(where, f"{side}_taps", t, f"1 without resampling, else a multiple of {f}")
    cutoff = bands["in_cutoff" if side == "up" else "out_cutoff"]
    if t > 1 and not cutoff < tmp / 2:
      raise _bad(where, "in_cutoff" if side == "up" else "out_cutoff", cutoff,
                 f"below half of tmp_sampling_rate {tmp:g}")
    factors[side], taps[side] = f, t
  padding = torch_pickle_padding(_attr(L, "padding", where), where)
  # The reference derives the padding from the rest (SynthesisLayer.init_upfirdn); requiring
  # the same value pins the output size and bounds the intermediate buffers.
  expected = []
  for axis in (0, 1):
    total = ((sizes["out_size"][axis] - 1) * factors["down"] + 1
             - (sizes["in_size"][axis] + kernel - 1) * factors["up"]
             + taps["up"] + taps["down"] - 2)
    lo = (total + factors["up"]) // 2
    expected += [lo, total - lo]
  if list(padding) != expected:
    raise _bad(where, "padding", list(padding), f"{expected}, as the reference derives it from "
               "sizes, kernel, factors and taps")
  return sx.LayerSpec(
      name=name, w_idx=w_idx,  # SynthesisNetwork.forward: input <- ws[0], layer i <- ws[i+1]
      is_torgb=is_torgb, is_critically_sampled=_flag(L, "is_critically_sampled", where),
      use_fp16=_flag(L, "use_fp16", where), **channels, **sizes,
      in_sampling_rate=rates["in_sampling_rate"], out_sampling_rate=rates["out_sampling_rate"],
      tmp_sampling_rate=tmp, **bands, conv_kernel=kernel, conv_clamp=clamp,
      up_factor=factors["up"], down_factor=factors["down"], up_taps=taps["up"],
      down_taps=taps["down"], down_radial=_flag(L, "down_radial", where), padding=padding)


def torch_pickle_padding(p: Any, where: str = "layer") -> tuple[int, int, int, int]:
  """The stored `padding` attribute ([x0, x1, y0, y1]) as four ints."""
  if isinstance(p, np.ndarray) and p.dtype.kind in "iu" and p.size == 4:
    vals = [int(v) for v in p.reshape(-1)]
  elif isinstance(p, (list, tuple)) and len(p) == 4 and all(_is_int(v) for v in p):
    vals = [int(v) for v in p]
  else:
    raise _bad(where, "padding", p, "four integers [x0, x1, y0, y1]")
  return tuple(vals)  # type: ignore[return-value]


def source_tensors(obj: PersistentObject | TorchModule, prefix: str = "") -> dict[str, Any]:
  """Flattens a module tree's `_parameters` and `_buffers` to {dotted key: array or None}."""
  out: dict[str, Any] = {}
  for group in ("_parameters", "_buffers"):
    tensors = obj.state.get(group, {}) if isinstance(obj.state, dict) else None
    if not isinstance(tensors, dict):
      raise ConversionError(f"{prefix or 'the generator.'}{group} is a "
                            f"{type(tensors).__name__}, not a dict")
    for k, v in tensors.items():
      out[prefix + str(k)] = v
  for k, child in _modules(obj).items():
    if child is None:
      continue
    if not isinstance(child, (PersistentObject, TorchModule)):
      raise ConversionError(f"submodule {prefix + str(k)} is a {type(child).__name__}")
    out.update(source_tensors(child, prefix + str(k) + "."))
  return out


def _listing(items: list[str], limit: int = 50) -> str:
  shown = ", ".join(items[:limit]) or "-"
  return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _fill(config: sx.StyleGANXLConfig, src: dict[str, Any], *,
          allow_nonfinite: bool = False) -> sx.StyleGANXL:
  """Builds the model from `config` and the flat source tensors, checking every value first.

  Args:
    config: the geometry from `config_from_generator`.
    src: {dotted key: array [...] or None} from `source_tensors`.
    allow_nonfinite: accept NaN/inf values (refused by default).
  Returns:
    the StyleGANXL with float32 parameters and buffers.
  """
  try:
    abstract = nnx.eval_shape(lambda: sx.StyleGANXL(config, rngs=nnx.Rngs(0)))
  except (ValueError, ZeroDivisionError, FloatingPointError) as e:  # scipy filter design
    raise ConversionError(f"unsupported generator geometry: {short_repr(str(e), 300)}") from e
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  ignored = {k for k in src if any(re.fullmatch(p, k) for p in IGNORED_SOURCE_KEYS)}
  # A None buffer is the reference's identity filter (taps == 1): the target has no variable.
  absent = {k for k, v in src.items() if v is None}
  table = {k: v for k, v in src.items() if k not in ignored and k not in absent}
  missing, bad_value, filled = [], [], []
  for path, var in flat:
    key = ".".join(str(p) for p in path)
    if key not in table:
      missing.append(key)
      continue
    value = table.pop(key)
    if not isinstance(value, np.ndarray):
      bad_value.append(f"{key}: a {type(value).__name__}, not a tensor")
      continue
    if tuple(value.shape) != tuple(var.shape):
      bad_value.append(f"{key}: source {value.shape} vs target {tuple(var.shape)}")
      continue
    try:
      arr = validate.float_tensor(key, value, allow_nonfinite=allow_nonfinite)
    except validate.TensorValueError as e:
      bad_value.append(str(e))
      continue
    filled.append((path, var.replace(jnp.asarray(arr))))
  unexpected = sorted(table)
  if missing or unexpected or bad_value:
    raise ConversionError(
        "key table mismatch:\n  missing (target not filled): " + _listing(missing)
        + "\n  unexpected (source not consumed): " + _listing([k[:100] for k in unexpected])
        + "\n  wrong shape/dtype/values: " + _listing(bad_value))
  new_state = nnx.from_flat_state(filled)
  return nnx.merge(graphdef, new_state)


def convert_network_pickle(path: str | pathlib.Path, net: str = "G_ema", *,
                           allow_nonfinite: bool = False) -> sx.StyleGANXL:
  """Reads a StyleGAN-XL pickle (official format) into a StyleGANXL model, without torch.

  Args:
    path: the .pkl file (a dict with 'G', 'G_ema', 'D', ...).
    net: which entry to convert: 'G_ema' (default, the one used for sampling) or 'G'.
    allow_nonfinite: convert tensors holding NaN/inf instead of refusing them.
  Returns:
    StyleGANXL with the stored weights, buffers and per-layer geometry.
  Raises:
    TorchFileError: truncated or unreadable file.
    ForbiddenGlobalError: the pickle names a global from a system module (os.system, eval, ...).
    ConversionError: not a StyleGAN-XL generator pickle, geometry it cannot have, the key table
      does not match, or a tensor is not float32/float16/bfloat16 or not finite.
  """
  data = torch_pickle.load_network_pickle(path).data
  if not isinstance(data, dict):
    raise ConversionError(f"{path} holds a {type(data).__name__}, not a network-pickle dict")
  if net not in data:
    keys = short_repr(sorted(map(str, data)))
    raise ConversionError(f"{path} has no {net!r} entry (keys: {keys}): not a StyleGAN-XL "
                          "network pickle")
  G = data[net]
  config = config_from_generator(G)
  return _fill(config, source_tensors(G), allow_nonfinite=allow_nonfinite)


def main(argv: list[str]) -> None:
  del argv
  logging.info("converting %s[%s] -> %s", FLAGS.pkl, FLAGS.net, FLAGS.out)
  model = convert_network_pickle(FLAGS.pkl, FLAGS.net, allow_nonfinite=FLAGS.allow_nonfinite)
  checkpoint.save(FLAGS.out, model)
  c = model.config
  logging.info("wrote %s: %d px, num_ws %d, %d layers, %d parameters", FLAGS.out,
               c.img_resolution, c.num_ws, len(c.layers),
               sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


if __name__ == "__main__":
  flags.DEFINE_string("pkl", None, "StyleGAN-XL network pickle (official format, e.g. "
                      "imagenet256.pkl). Read without torch; embedded code is never executed.")
  flags.DEFINE_string("out", None, "Output checkpoint directory (an existing linkjax generator "
                      "checkpoint is replaced; any other existing folder is refused).")
  flags.DEFINE_enum("net", "G_ema", ["G_ema", "G"], "Which generator entry to convert.")
  flags.DEFINE_bool("allow_nonfinite", False, "Convert tensors that hold NaN or inf (refused by "
                    "default: a checkpoint with them cannot generate images).")
  flags.mark_flags_as_required(["pkl", "out"])
  FLAGS = flags.FLAGS
  cli.run(main)
