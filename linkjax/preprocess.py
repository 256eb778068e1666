"""Generator images -> classifier inputs, exactly as the original pipeline does it.

Two paths:

* Exact (`to_uint8` then `classifier_input`): what the reference code feeds the ResNet.
  `(x + 1) * 127.5`, clamp to [0, 255], cast to uint8 (truncation toward zero, like torch's
  `.to(torch.uint8)`), then torchvision's eval transform on a PIL image: `Resize(256)`
  (shorter side to 256, PIL bilinear, which always antialiases; identity when the shorter
  side already is 256), `CenterCrop(224)`, `ToTensor()` (/255) and ImageNet `Normalize`.
  The resize reproduces Pillow's 8-bit resampler bit for bit: the same filter coefficients
  (computed in float64, quantised to 22-bit fixed point), the same order (horizontal pass,
  rounded to uint8, then vertical pass) and the same rounding, in int32 arithmetic.
  (Pillow >= 13 may run the vertical pass first for some tall inputs, PR #9549, which moves
  a few pixels by one level; the original pipeline predates that, and square or landscape
  inputs, such as StyleGAN's, are unaffected.)
* Differentiable (`classifier_input_float`): the same geometry and normalisation on float
  values with no quantisation anywhere (no uint8 cast, no clamp, no 8-bit rounding between
  resize passes; same resampling weights), for gradients through the classifier. It differs
  from the exact path by at most about one uint8 level per pixel before normalisation
  (plus whatever the clamp removes for out-of-range generator outputs).

Images are NHWC after `to_uint8`; generator output is NCHW.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from linkjax import files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pillow's fixed-point precision for 8-bit resampling (libImaging/Resample.c).
_PRECISION_BITS = 32 - 8 - 2


def to_uint8(x: jax.Array) -> jax.Array:
  """Generator output to uint8 images, as torch's `(x+1)*127.5 -> clamp -> .to(uint8)`.

  Args:
    x: [B, 3, H, W] float, nominally in [-1, 1].

  Returns:
    [B, H, W, 3] uint8 (values truncated toward zero).
  """
  y = (x.astype(jnp.float32) + jnp.float32(1.0)) * jnp.float32(127.5)
  y = jnp.clip(y, jnp.float32(0.0), jnp.float32(255.0))
  return jnp.transpose(y.astype(jnp.uint8), (0, 2, 3, 1))


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
  """torchvision's `Resize(size)` output (h, w): shorter side to `size`, aspect kept (floor)."""
  if h <= w:
    return size, int(size * w / h)
  return int(size * h / w), size


def pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """Pillow's antialiased bilinear resampling matrix (float64 [out_size, in_size]).

  Mirrors `precompute_coeffs` in Pillow's Resample.c: the triangle filter is stretched by
  the downscale factor (antialiasing), each output row's taps are normalised to sum 1.
  """
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 1.0 * filterscale  # bilinear filter support is 1
  ss = 1.0 / filterscale
  out = np.zeros((out_size, in_size), np.float64)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    # C casts truncate toward zero, as int() does.
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    # Same float64 operation order as the C code (multiply by 1/filterscale, sequential sum),
    # so the 22-bit fixed-point coefficients below round identically.
    k = [max(0.0, 1.0 - abs((x - center + 0.5) * ss)) for x in range(xmin, xmax)]
    total = 0.0
    for v in k:
      total += v
    out[xx, xmin:xmax] = [v / total for v in k] if total != 0.0 else k
  return out


def _pil_fixed_point(weights: np.ndarray) -> np.ndarray:
  # normalize_coeffs_8bpc: round half away from zero to 22 fractional bits.
  scaled = weights * (1 << _PRECISION_BITS)
  return np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)


def _resample_axis_uint8(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  """One Pillow 8-bit resampling pass along spatial `axis` (1: H, 2: W) of int32 NHWC."""
  kk = jnp.asarray(_pil_fixed_point(pil_bilinear_weights(x.shape[axis], out_size)))
  spec = "bhwc,oh->bowc" if axis == 1 else "bhwc,ow->bhoc"
  acc = jnp.einsum(spec, x, kk, preferred_element_type=jnp.int32)
  acc = acc + jnp.int32(1 << (_PRECISION_BITS - 1))
  return jnp.clip(acc >> _PRECISION_BITS, 0, 255).astype(jnp.int32)


def resize_uint8(images: jax.Array, size: int) -> jax.Array:
  """torchvision `Resize(size)` of uint8 PIL images, bit-exact with Pillow's BILINEAR.

  Args:
    images: [B, H, W, C] uint8.
    size: target length of the shorter side.

  Returns:
    [B, H', W', C] uint8 (the input itself when the size is unchanged).
  """
  h, w = images.shape[1], images.shape[2]
  oh, ow = resized_size(h, w, size)
  if (oh, ow) == (h, w):
    return images
  x = images.astype(jnp.int32)
  # Pillow runs the horizontal pass first and stores it as 8-bit before the vertical pass.
  if ow != w:
    x = _resample_axis_uint8(x, 2, ow)
  if oh != h:
    x = _resample_axis_uint8(x, 1, oh)
  return x.astype(jnp.uint8)


def resize_float(images: jax.Array, size: int) -> jax.Array:
  """Differentiable antialiased bilinear resize with Pillow's weights, no quantisation.

  Args:
    images: [B, H, W, C] float32.
    size: target length of the shorter side.

  Returns:
    [B, H', W', C] float32.
  """
  h, w = images.shape[1], images.shape[2]
  oh, ow = resized_size(h, w, size)
  x = images
  if ow != w:
    x = jnp.einsum("bhwc,ow->bhoc", x, jnp.asarray(pil_bilinear_weights(w, ow), jnp.float32))
  if oh != h:
    x = jnp.einsum("bhwc,oh->bowc", x, jnp.asarray(pil_bilinear_weights(h, oh), jnp.float32))
  return x


def center_crop(images: jax.Array, crop: int) -> jax.Array:
  """torchvision `CenterCrop(crop)` (offsets `int(round((h - crop) / 2))`). images: [B, H, W, C]."""
  h, w = images.shape[1], images.shape[2]
  if crop > h or crop > w:
    raise ValueError(f"crop {crop} is larger than the image ({h}x{w})")
  top = int(round((h - crop) / 2.0))
  left = int(round((w - crop) / 2.0))
  return images[:, top:top + crop, left:left + crop, :]


def normalize(x01: jax.Array) -> jax.Array:
  """ImageNet `Normalize` of [..., 3] float32 values in [0, 1]."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (x01 - mean) / std


def denormalize(x: jax.Array) -> jax.Array:
  """Inverse of `normalize`, clipped to [0, 1]: a classifier input as a viewable image."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return jnp.clip(x * std + mean, 0.0, 1.0)


def check_uint8_images(images: jax.Array | np.ndarray) -> None:
  """Raises ValueError unless `images` is a uint8 [N, H, W, 3] array."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images of shape [N, H, W, 3], got {tuple(images.shape)}")
  if images.dtype != np.uint8:
    raise ValueError(f"expected uint8 images, got dtype {images.dtype}")


def classifier_input(images_uint8: jax.Array, resize: int | None = 256,
                     crop: int | None = 224) -> jax.Array:
  """Exact torchvision eval transform (Resize, CenterCrop, ToTensor, Normalize), NHWC.

  Args:
    images_uint8: [B, H, W, 3] uint8.
    resize: shorter side after resizing, or None to skip.
    crop: centre crop size, or None to skip.

  Returns:
    [B, crop, crop, 3] float32, normalised.
  """
  check_uint8_images(images_uint8)
  x = images_uint8
  if resize is not None:
    x = resize_uint8(x, resize)
  if crop is not None:
    x = center_crop(x, crop)
  return normalize(x.astype(jnp.float32) / jnp.float32(255.0))


def classifier_input_float(x: jax.Array, resize: int | None = 256,
                           crop: int | None = 224) -> jax.Array:
  """Differentiable counterpart of `classifier_input(to_uint8(x))`, without quantisation.

  Args:
    x: [B, 3, H, W] float generator output in ~[-1, 1] (not clamped, so gradients flow).
    resize: shorter side after resizing, or None to skip.
    crop: centre crop size, or None to skip.

  Returns:
    [B, crop, crop, 3] float32, normalised.
  """
  y = (jnp.transpose(x.astype(jnp.float32), (0, 2, 3, 1)) + jnp.float32(1.0)) * jnp.float32(127.5)
  if resize is not None:
    y = resize_float(y, resize)
  if crop is not None:
    y = center_crop(y, crop)
  return normalize(y / jnp.float32(255.0))


# --- reading image files --------------------------------------------------------------------

# An image file larger than this many pixels is refused before decoding (a PNG bomb).
MAX_IMAGE_PIXELS = 8192 * 8192


def read_images(path: str | pathlib.Path) -> np.ndarray:
  """Loads uint8 images from a .npy, a .npz or a folder of PNG files.

  A .npz must hold one array or an array named 'images'. PNGs are read in sorted file-name
  order with Pillow, converted to RGB, and must all have the same size.

  Args:
    path: file or folder.
  Returns:
    [N, H, W, 3] uint8.
  Raises:
    ValueError: missing, unreadable or inconsistent files, wrong dtype or shape (one line
      naming the file).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise ValueError(f"{path} does not exist")
  if path.is_dir():
    names = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not names:
      raise ValueError(f"{path} contains no .png files")
    arrays = [_read_png(names[0])]
    for f in names[1:]:
      arrays.append(_read_png(f))
      if arrays[-1].shape != arrays[0].shape:
        raise ValueError(f"{f} has size {arrays[-1].shape[:2]}, but {names[0].name} has "
                         f"{arrays[0].shape[:2]}; all images must have the same size")
    images = np.stack(arrays)
  elif path.suffix == ".npy":
    try:
      images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise ValueError(f"{path} is not a readable .npy array ({type(e).__name__}: {e})") from e
  elif path.suffix == ".npz":
    arrays = files.read_npz(path)
    if "images" in arrays:
      images = arrays["images"]
    elif len(arrays) == 1:
      images = next(iter(arrays.values()))
    else:
      raise ValueError(f"{path} holds arrays {sorted(arrays)}; name the images array 'images'")
  else:
    raise ValueError(f"{path}: expected a .npy, a .npz or a folder of .png files")
  check_uint8_images(images)
  return images


def _read_png(path: pathlib.Path) -> np.ndarray:
  try:
    with Image.open(path) as im:
      if im.width * im.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{path} is {im.width}x{im.height} pixels, too large to read")
      return np.asarray(im.convert("RGB"), np.uint8)
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e})") from e
