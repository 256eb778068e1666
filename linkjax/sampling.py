"""Sampling images from a generator: the reference's per-seed latents, batched generation."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from linkjax import files, jobs, preprocess
from linkjax.models.stylegan_xl import StyleGANXL


def seed_latents(seeds: list[int] | tuple[int, ...], z_dim: int) -> np.ndarray:
  """The reference's per-seed latents: z = numpy.random.RandomState(seed).randn(z_dim).

  Args:
    seeds: N integer seeds.
    z_dim: latent width.
  Returns:
    [N, z_dim] float32.
  """
  return np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds]).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate(graphdef: nnx.GraphDef, psi: float, cutoff: int | None, state: nnx.State,
              z: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  g = nnx.merge(graphdef, state)
  ws = g.mapping(z, c, psi=psi, cutoff=cutoff)
  return ws, preprocess.to_uint8(g.synthesis(ws))


def generate(model: StyleGANXL, z: np.ndarray, class_idx: np.ndarray, *, psi: float = 1.0,
             cutoff: int | None = None, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Maps and synthesises in jitted batches of min(batch_size, N) (the last one padded).

  Args:
    model: the generator.
    z: [N, z_dim] latents; class_idx: [N] int class indices in [0, c_dim).
    psi: finite truncation psi towards w_avg[class] (static: psi == 1 skips truncation exactly
      like the reference); cutoff: truncate only the first `cutoff` ws rows.
    batch_size: samples per compiled call.
  Returns:
    (ws [N, num_ws, w_dim] float32, images_uint8 [N, H, W, 3]) with the reference's
    `(x + 1) * 127.5`, clip, truncating cast.
  Raises:
    ValueError: a class index out of range, a non-finite psi, or z of the wrong shape.
  """
  z = np.asarray(z, np.float32)
  class_idx = np.asarray(class_idx)
  c = model.config
  if z.ndim != 2 or z.shape[1] != c.z_dim or class_idx.shape != (z.shape[0],):
    raise ValueError(f"expected z [N, {c.z_dim}] and class_idx [N], got {z.shape} and "
                     f"{class_idx.shape}")
  if not np.all(np.isfinite(z)):
    raise ValueError("z holds non-finite values")
  bad = class_idx[(class_idx < 0) | (class_idx >= c.c_dim)]
  if bad.size:
    raise ValueError(f"class indices {sorted(set(bad.tolist()))[:5]} outside the generator's "
                     f"{c.c_dim} classes (0..{c.c_dim - 1})")
  if not np.isfinite(psi):
    raise ValueError(f"psi must be a finite number, got {psi}")
  graphdef, state = nnx.split(model)
  fn = functools.partial(_generate, graphdef, float(psi), cutoff)
  ws, images = jobs.map_batches(fn, state, z, class_idx.astype(np.int32), batch=batch_size,
                                mesh=jobs.data_mesh(1), fixed_shape=False)
  return ws, images


def read_ws(path: str, num_ws: int, w_dim: int) -> np.ndarray:
  """`ws` [N, num_ws, w_dim] of a samples file, checked against the generator."""
  arrays = files.read_npz(path)
  if "ws" not in arrays:
    raise ValueError(f"{path} holds {sorted(arrays)}, not an array named 'ws' (an "
                     "experiments.generate samples.npz)")
  ws = arrays["ws"]
  if ws.shape[1:] != (num_ws, w_dim) or ws.shape[0] == 0:
    raise ValueError(f"{path}: ws must be [N, {num_ws}, {w_dim}] for this generator, got "
                     f"{ws.shape}")
  if not np.all(np.isfinite(ws)):
    raise ValueError(f"{path}: ws holds non-finite values")
  return ws.astype(np.float32)
