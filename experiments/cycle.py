r"""Cycle evaluation of a linking network (paper Fig. 3B/C): w -> I -> r -> w~ -> I~.

  python -m experiments.cycle --pairs=out/pairs --link=out/link --generator=ckpt/sgxl256 \
      --classifier=ckpt/resnet50 --n=200 --out=out/cycle

Evaluates up to --n of the link's held-out pairs (its checkpoint's split; see
`linkjax.cycle.heldout_indices`) and writes cycle.csv (per sample), summary.json, pairs.png and
cycle_scatter.png.
"""

from absl import flags, logging

from linkjax import bundle, cli, cycle

_D = cycle.CycleConfig()
_PAIRS = flags.DEFINE_string("pairs", None, "Pairs directory (experiments.make_pairs --out).",
                             required=True)
_LINK = flags.DEFINE_string("link", None, "Link checkpoint directory (experiments.fit_link --out).",
                            required=True)
_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory.",
                                 required=True)
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Converted classifier checkpoint directory.",
                                  required=True)
_N = flags.DEFINE_integer("n", _D.n, "Number of held-out pairs to evaluate (all if fewer).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of the subset choice and of the random-pairs "
                             "baseline.")
_BATCH = flags.DEFINE_integer("batch", _D.batch, "Images per compiled call (padded to a multiple "
                              "of the device count).")
_N_SHOW = flags.DEFINE_integer("n_show", _D.n_show, "Image pairs I | I~ drawn in pairs.png.")
_LPIPS = flags.DEFINE_bool("lpips", _D.lpips, "Compute LPIPS (AlexNet v0.1; images of at least "
                           "32 px); columns are empty when off.")
_OUT = flags.DEFINE_string("out", None, "Output directory (cycle.csv, summary.json, pairs.png).",
                           required=True)


def main(argv):
  del argv
  cli.log_flags(__name__)
  models, params = bundle.ModelBundle.load(generator=_GENERATOR.value,
                                           classifier=_CLASSIFIER.value)
  config = cycle.CycleConfig(n=_N.value, seed=_SEED.value, batch=_BATCH.value,
                             lpips=_LPIPS.value, n_show=_N_SHOW.value)
  summary = cycle.run(_PAIRS.value, _LINK.value, models, params, _OUT.value, config)
  logging.info("summary: %s", summary)


if __name__ == "__main__":
  cli.run(main)
