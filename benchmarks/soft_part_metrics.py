"""Does a sub-pixel measurement make small parts' metrics track the truth? (issue 18, item 3)

The demo's world stage correlates part metrics measured the method's way (hard argmax mask of the
few-shot segmenter at 64 x 64 on G(z, c)) with the same metrics on the render and its true mask.
Small parts (eye, nose, tongue, ear) cover a few pixels, so a hard mask quantises their area
coarsely. This benchmark measures, on the world stage's exact samples (seed 0, fold_in 102, 200
class-balanced latents, psi 1, minimum area 5 px at 64 x 64), three ways to read area and
luminance off the same segmenter logits:

  hard       argmax mask at 64 x 64 (the method today; must reproduce the world stage);
  up128      logits bilinearly upsampled to 128 x 128, argmax, area / 4, luminance of the
             bilinearly upsampled image inside that mask (a finer boundary, same segmenter);
  soft       area = sum of the part's softmax probability over pixels, luminance = its
             probability-weighted mean luma (no threshold at all).

Truth is unchanged: the true mask and render at 64 x 64. Each is Pearson r over samples where
both the hard measured and the true area are >= 5 px (the same samples for all three). Nothing
is retrained; only the readout differs.

  python -m benchmarks.soft_part_metrics --out=FILE.json
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from linkjax import bundle as bundle_lib
from linkjax import demo, files, jobs, preprocess, quantify
from linkjax.miniworld import groundtruth
from linkjax.models import segmenter as segmenter_lib

_OUT = flags.DEFINE_string("out", None, "JSON to write.", required=True)
_N = flags.DEFINE_integer("n", 200, "Generated images (the world stage's quality_images).")
_SEED = flags.DEFINE_integer("seed", 0, "The demo's seed.")
_MIN_AREA = flags.DEFINE_float("min_area", 5.0, "Minimum part area (px at 64 x 64).")

_LUMA = jnp.asarray(quantify.LUMA, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _readouts(models: bundle_lib.ModelBundle, params, z, c):
  ws = models.mapping(params, z, c, psi=1.0)
  img, feats = models.render(params, ws, features=True)
  u8 = preprocess.to_uint8(img)
  seg = nnx.merge(models.segmenter, params["segmenter"])
  logits = seg(segmenter_lib.select_features(feats, seg.config.feature_layers))  # [B, R, R, K]
  res, k = logits.shape[1], logits.shape[-1]
  im = models.at_mask_resolution(u8).astype(jnp.float32) / 255.0
  luma = im @ _LUMA  # [B, R, R]
  onehot = jax.nn.one_hot(jnp.argmax(logits, -1), k)
  prob = jax.nn.softmax(logits, -1)
  b = logits.shape[0]
  up = jax.image.resize(logits, (b, 2 * res, 2 * res, k), "linear")
  up_onehot = jax.nn.one_hot(jnp.argmax(up, -1), k)
  up_luma = jax.image.resize(luma, (b, 2 * res, 2 * res), "linear")

  def area_lum(w, lum, scale):
    area = w.sum((1, 2))  # [B, K]
    lm = (w * lum[..., None]).sum((1, 2)) / jnp.maximum(area, 1e-6)
    return area * scale, lm

  out = {}
  for name, (w, lum, scale) in {"hard": (onehot, luma, 1.0), "soft": (prob, luma, 1.0),
                                "up128": (up_onehot, up_luma, 0.25)}.items():
    out[f"{name}_area"], out[f"{name}_lum"] = area_lum(w, lum, scale)
  t_img, t_mask = groundtruth.true_render(z, c)
  true = quantify.part_metrics(t_img, t_mask, n_labels=k)  # [B, K-1, M]
  out["true_area"] = true[..., quantify.AREA]
  out["true_lum"] = true[..., quantify.METRIC_NAMES.index("luminance")]
  return out


def main(argv):
  del argv
  cfg = demo.make_config(world=True)
  models, params = bundle_lib.ModelBundle.load(**cfg.paths())
  key = jax.random.key(_SEED.value)
  z, c = groundtruth.heldout_latents(jax.random.fold_in(key, 102), _N.value, models.z_dim)
  d = jobs.map_batches(functools.partial(_readouts, models), params, z, c, batch=50,
                       mesh=jobs.data_mesh(1))
  names = list(models.label_names[1:])
  valid = (d["hard_area"][:, 1:] >= _MIN_AREA.value) & (d["true_area"] >= _MIN_AREA.value)
  result = {"n": _N.value, "min_part_area_px": _MIN_AREA.value, "parts": {}}
  for i, part in enumerate(names):
    sel = valid[:, i]
    row = {"n": int(sel.sum())}
    for name in ("hard", "soft", "up128"):
      for m, t in (("area", "true_area"), ("lum", "true_lum")):
        row[f"{name}_{m}"] = groundtruth.pearson(d[f"{name}_{m}"][sel, i + 1], d[t][sel, i])
    result["parts"][part] = row
  for name in ("hard", "soft", "up128"):
    for m in ("area", "lum"):
      vals = [r[f"{name}_{m}"] for r in result["parts"].values()]
      result[f"median_{name}_{m}"] = float(np.nanmedian(vals))  # NaN: too few samples
      result[f"min_{name}_{m}"] = float(np.nanmin(vals))
  files.write_json(_OUT.value, files.json_safe(result))
  print(f"{'part':8s} " + " ".join(f"{n + '_' + m:>11s}" for m in ("area", "lum")
                                   for n in ("hard", "soft", "up128")))
  for part, r in result["parts"].items():
    print(f"{part:8s} " + " ".join(f"{r[n + '_' + m]:11.3f}" for m in ("area", "lum")
                                   for n in ("hard", "soft", "up128")))


if __name__ == "__main__":
  app.run(main)
