r"""Samples images from a converted StyleGAN-XL checkpoint.

  python -m experiments.generate --generator=ckpt/sgxl256 --classes=151,232 --seeds=0-7 \
      --psi=0.7 --out=out/samples

Latents follow the reference convention: z for seed s is `numpy.random.RandomState(s).randn(z_dim)`,
and every (class, seed) combination is drawn (class-major order). `--z=FILE.npy` replaces the seeds
with an explicit [N, z_dim] array, paired with --classes (one class per row, or one for all).
Writes `samples.npz` (z [N, z_dim], class_idx [N], seeds [N] (-1 with --z), ws [N, num_ws, w_dim],
images_uint8 [N, H, W, 3]) and `grid.png` (one row per class with seeds, else rows of 8).
"""

from __future__ import annotations

import pathlib

import numpy as np
from absl import flags, logging
from PIL import Image

from linkjax import checkpoint, cli, files, sampling

_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory "
                                 "(python -m ports.stylegan_xl).")
_CLASSES = flags.DEFINE_list("classes", ["151", "232"], "Comma-separated ImageNet class indices.")
_SEEDS = flags.DEFINE_string("seeds", "0-7", "Seeds, e.g. '0-7' or '0,3,10-12' (ignored with --z).")
_PSI = flags.DEFINE_float("psi", 0.7, "Truncation psi towards the class's w_avg (1 = none).")
_CUTOFF = flags.DEFINE_integer("truncation_cutoff", None, "Truncate only the first N ws rows "
                               "(default: all).")
_Z = flags.DEFINE_string("z", None, "Optional .npy file with latents [N, z_dim] overriding "
                         "--seeds; --classes gives one class per row or a single class for all.")
_BATCH = flags.DEFINE_integer("batch", 8, "Samples per compiled call.")
_OUT = flags.DEFINE_string("out", None, "Output directory (samples.npz, grid.png).")


def parse_seeds(spec: str) -> list[int]:
  """'0-3,7' -> [0, 1, 2, 3, 7] (ranges inclusive); seeds must be in [0, 2**32)."""
  seeds = cli.parse_ranges(spec, "seed")
  bad = [s for s in seeds if not 0 <= s < 2**32]
  if bad:
    raise ValueError(f"seeds {bad[:5]} outside [0, 2**32) (numpy RandomState seeds)")
  return seeds


def image_grid(images: np.ndarray, ncols: int) -> np.ndarray:
  """[N, H, W, 3] uint8 -> one [rows * H, ncols * W, 3] image (missing cells black)."""
  n, h, w, c = images.shape
  rows = -(-n // ncols)
  grid = np.zeros((rows * h, ncols * w, c), np.uint8)
  for i, im in enumerate(images):
    r, q = divmod(i, ncols)
    grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
  return grid


def run(generator_dir: str, out_dir: str, classes: list[int], seeds: list[int] | None = None,
        z: np.ndarray | None = None, psi: float = 0.7, cutoff: int | None = None,
        batch: int = 8) -> dict[str, np.ndarray]:
  """Loads the generator, draws the samples and writes samples.npz and grid.png."""
  model = checkpoint.load(generator_dir, role="generator")
  z_dim = model.config.z_dim
  if z is None:
    zs = sampling.seed_latents(seeds, z_dim)
    z = np.concatenate([zs] * len(classes))
    class_idx = np.repeat(np.asarray(classes, np.int32), len(seeds))
    seed_col = np.tile(np.asarray(seeds, np.int64), len(classes))
    ncols = len(seeds)
  else:
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != z_dim:
      raise ValueError(f"--z must be [N, {z_dim}], got {z.shape}")
    if len(classes) not in (1, z.shape[0]):
      raise ValueError(f"--classes needs 1 or {z.shape[0]} entries with --z, got {len(classes)}")
    class_idx = np.broadcast_to(np.asarray(classes, np.int32), (z.shape[0],)).copy()
    seed_col = np.full((z.shape[0],), -1, np.int64)
    ncols = min(8, z.shape[0])
  ws, images = sampling.generate(model, z, class_idx, psi=psi, cutoff=cutoff,
                                 batch_size=batch)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  result = {"z": z, "class_idx": class_idx, "seeds": seed_col, "ws": ws, "images_uint8": images}
  files.write_npz(out / "samples.npz", result)
  grid = image_grid(images, ncols)
  files.write_atomic(out / "grid.png", lambda f: Image.fromarray(grid).save(f, format="PNG"))
  return result


def main(argv):
  del argv
  for name in ("generator", "classes", "seeds", "psi", "truncation_cutoff", "z", "batch", "out"):
    logging.info("--%s=%s", name, flags.FLAGS[name].value)
  z = None
  if _Z.value:
    try:
      z = np.load(_Z.value, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"--z={_Z.value} is not a readable .npy array: {e}") from e
  res = run(_GENERATOR.value, _OUT.value, [int(c) for c in _CLASSES.value],
            seeds=None if z is not None else parse_seeds(_SEEDS.value), z=z, psi=_PSI.value,
            cutoff=_CUTOFF.value, batch=_BATCH.value)
  logging.info("wrote %d samples to %s", res["z"].shape[0], _OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["generator", "out"])
  cli.run(main)
