r"""Cycle evaluation of a linking network (paper Fig. 3B/C): w -> I -> r -> w~ -> I~.

  python -m experiments.cycle --pairs=out/pairs --link=out/link --generator=ckpt/sgxl256 \
      --classifier=ckpt/resnet50 --n=200 --out=out/cycle

Evaluates up to --n of the link's held-out pairs (its checkpoint's split; see
`linkjax.cycle.heldout_indices`) and writes cycle.csv (per sample), summary.json and pairs.png.
"""

from absl import app
from absl import flags
from absl import logging

_PAIRS = flags.DEFINE_string("pairs", None, "Pairs directory (experiments.make_pairs --out).")
_LINK = flags.DEFINE_string("link", None, "Link checkpoint directory (experiments.fit_link --out).")
_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Converted ResNet checkpoint directory.")
_N = flags.DEFINE_integer("n", 200, "Number of held-out pairs to evaluate (all if fewer).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the subset choice and of the random-pairs "
                             "baseline.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per compiled call (padded to a multiple of the "
                              "device count).")
_N_SHOW = flags.DEFINE_integer("n_show", 8, "Image pairs I | I~ drawn in pairs.png.")
_LPIPS = flags.DEFINE_bool("lpips", True, "Compute LPIPS (AlexNet v0.1); columns are empty when "
                           "off or unavailable.")
_OUT = flags.DEFINE_string("out", None, "Output directory (cycle.csv, summary.json, pairs.png).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("pairs", "link", "generator", "classifier", "n", "seed", "batch", "n_show", "lpips",
               "out"):
    logging.info("--%s=%s", name, flags.FLAGS[name].value)
  from linkjax import checkpoint  # noqa: PLC0415  (after flag parsing, so --help is fast)
  from linkjax import cycle  # noqa: PLC0415
  from linkjax import link  # noqa: PLC0415
  from linkjax import pairs  # noqa: PLC0415

  data = pairs.load(_PAIRS.value)
  params, meta = link.load(_LINK.value)
  idx, source = cycle.heldout_indices(len(data["w"]), meta, _N.value, _SEED.value)
  logging.info("evaluating %d pairs (%s)", len(idx), source)
  generator = checkpoint.load(_GENERATOR.value, role="generator")
  classifier = checkpoint.load(_CLASSIFIER.value, role="classifier")
  res = cycle.cycle_eval(generator, classifier, params, data["w"][idx], seed=_SEED.value,
                         batch=_BATCH.value,
                         lpips_fn=cycle.default_lpips() if _LPIPS.value else None)
  info = {"pairs": _PAIRS.value, "link": _LINK.value, "generator": _GENERATOR.value,
          "classifier": _CLASSIFIER.value, "seed": _SEED.value, "heldout_source": source}
  summary = cycle.write_outputs(_OUT.value, res, pair_idx=idx, class_idx=data["class_idx"][idx],
                                draw_idx=data["draw_idx"][idx], info=info, n_show=_N_SHOW.value)
  logging.info("summary: %s", summary)


if __name__ == "__main__":
  for _name in ("pairs", "link", "generator", "classifier", "out"):
    flags.mark_flag_as_required(_name)
  app.run(main)
