"""Part masks: resizing, files (PNG / npz label maps), coloured overlays, and the masks of
generated images."""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import matplotlib
import numpy as np
from PIL import Image

from linkjax import bundle as bundle_lib
from linkjax import files, jobs, preprocess
from linkjax.models.segmenter import nearest_indices


def resize_masks(masks: np.ndarray, resolution: int) -> np.ndarray:
  """Nearest resize of integer masks [N, H, W] -> [N, resolution, resolution] int32 (torch rule)."""
  masks = np.asarray(masks)
  rows = nearest_indices(masks.shape[-2], resolution)
  cols = nearest_indices(masks.shape[-1], resolution)
  return masks[..., rows, :][..., :, cols].astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _segment(models: bundle_lib.ModelBundle, params: Any, ws: jax.Array) -> dict[str, jax.Array]:
  images, feats = models.render(params, ws, features=True)
  return {"masks": models.segment(params, feats), "images": preprocess.to_uint8(images)}


def segment_ws(models: bundle_lib.ModelBundle, params: Any, ws: np.ndarray,
               batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Generates images from ws and segments them.

  Args:
    models, params: a bundle with generator and segmenter.
    ws: [N, num_ws, w_dim] (or [N, w_dim], tiled to every row).
    batch_size: images per call.
  Returns:
    (masks [N, R, R] int32, images [N, H, W, 3] uint8 from `preprocess.to_uint8`) as numpy.
  """
  out = jobs.map_batches(functools.partial(_segment, models), params,
                         np.asarray(ws, np.float32), batch=batch_size, mesh=jobs.data_mesh(1),
                         fixed_shape=False)
  return out["masks"], out["images"]


# A mask larger than this many pixels is refused before decoding (a PNG bomb).
MAX_MASK_PIXELS = 4096 * 4096


def load_masks(path: str | pathlib.Path, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads label masks from `masks.npz` (key `masks` [N, H, W], optional `indices`) or PNGs.

  A directory of PNGs holds `<index>.png` (single channel, or palette, one label index per pixel)
  named by sample index in the samples file.

  Args:
    path: a directory (with masks.npz or PNGs) or an .npz file.
    n: number of samples; indices must be below it.
  Returns:
    (sample indices [M] int64, masks [M, H, W] int32).
  Raises:
    ValueError: missing, damaged or inconsistent mask files (one line naming the file).
  """
  path = pathlib.Path(path)
  npz = path if path.suffix == ".npz" else path / "masks.npz"
  if npz.is_file():
    arrays = files.read_npz(npz)
    if "masks" not in arrays:
      raise ValueError(f"{npz} holds {sorted(arrays)}, not an array named 'masks'")
    masks = arrays["masks"]
    indices = arrays.get("indices", np.arange(len(masks)))
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
      raise ValueError(f"{npz}: 'masks' must be an integer array [N, H, W], got {masks.dtype} "
                       f"{masks.shape}")
    if indices.shape != (len(masks),) or not np.issubdtype(indices.dtype, np.integer):
      raise ValueError(f"{npz}: 'indices' must be {len(masks)} integers, got {indices.dtype} "
                       f"{indices.shape}")
  elif not path.is_dir():
    raise ValueError(f"{path} is neither a masks.npz nor a directory of <index>.png masks")
  else:
    pngs = sorted(path.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    bad = [p.name for p in pngs if not p.stem.isdigit()]
    if bad or not pngs:
      raise ValueError(f"{path}: expected <index>.png mask files, found {bad or 'none'}")
    indices = np.array([int(p.stem) for p in pngs])
    arrays = []
    for p in pngs:
      arrays.append(_read_mask_png(p))
      if arrays[-1].shape != arrays[0].shape:
        raise ValueError(f"{p} is {arrays[-1].shape}, but {pngs[0].name} is {arrays[0].shape}; "
                         "all masks must have the same size")
    masks = np.stack(arrays)
  if len(np.unique(indices)) != len(indices):
    raise ValueError(f"{path}: duplicate mask indices")
  if n is not None and (indices.min() < 0 or indices.max() >= n):
    raise ValueError(f"mask indices {indices.tolist()[:10]} out of range for {n} samples")
  return indices.astype(np.int64), masks.astype(np.int32)


def _read_mask_png(p: pathlib.Path) -> np.ndarray:
  try:
    with Image.open(p) as img:
      if img.width * img.height > MAX_MASK_PIXELS:
        raise ValueError(f"{p} is {img.width}x{img.height} pixels, more than a mask can be")
      if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"{p}: mask PNG must hold one label index per pixel, mode is {img.mode}")
      return np.asarray(img)
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"{p} is not a readable PNG ({type(e).__name__}: {e})") from e


def label_colors(n_labels: int) -> np.ndarray:
  """[n_labels, 3] uint8 colours: black background, matplotlib 'tab10'/'tab20' for parts."""
  cmap = matplotlib.colormaps["tab10" if n_labels <= 11 else "tab20"]
  cols = [(0.0, 0.0, 0.0)] + [cmap(i % cmap.N)[:3] for i in range(n_labels - 1)]
  return (np.asarray(cols) * 255).round().astype(np.uint8)


def overlay_grid(images_uint8: np.ndarray, masks: np.ndarray, n_labels: int, cols: int = 8,
                 alpha: float = 0.5) -> np.ndarray:
  """Image | overlay pairs in a grid.

  Args:
    images_uint8: [N, H, W, 3] uint8.
    masks: [N, R, R] int labels; images are resized (nearest) to R.
    n_labels: number of labels (colour table size).
    cols: pairs per grid row.
    alpha: mask opacity over non-background pixels.
  Returns:
    [rows * R, cols * 2R, 3] uint8.
  """
  n, r = masks.shape[0], masks.shape[-1]
  rows_i = nearest_indices(images_uint8.shape[1], r)
  cols_i = nearest_indices(images_uint8.shape[2], r)
  images = images_uint8[:, rows_i][:, :, cols_i].astype(np.float32)
  colors = label_colors(n_labels).astype(np.float32)[np.clip(masks, 0, n_labels - 1)]
  fg = (masks > 0)[..., None]
  over = np.where(fg, (1 - alpha) * images + alpha * colors, images)
  tiles = np.concatenate([images, over], axis=2).round().astype(np.uint8)  # [N, R, 2R, 3]
  n_rows = -(-n // cols)
  grid = np.zeros((n_rows * r, min(cols, n) * 2 * r, 3), np.uint8)
  for i in range(n):
    y, x = divmod(i, cols)
    grid[y * r:(y + 1) * r, x * 2 * r:(x + 1) * 2 * r] = tiles[i]
  return grid
