"""Fits a linking network r -> w on a pairs directory and reports held-out metrics.

  python -m experiments.fit_link --pairs=DIR --model=ols --holdout=0.1 --seed=0 --out=DIR

Writes the link checkpoint (linkjax.link.save) to --out and --out/metrics.json.
"""

import json
import pathlib

from absl import app, flags, logging

from linkjax import link, pairs

_PAIRS = flags.DEFINE_string("pairs", None, "Pairs directory written by experiments.make_pairs "
                             "(reads DIR/pairs.npz).", required=True)
_MODEL = flags.DEFINE_enum("model", "ols", ["ols", "ridge", "mlp"],
                           "Linking model: least squares with intercept, ridge, or ReLU MLP.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Ridge L2 penalty (only --model=ridge).")
_HOLDOUT = flags.DEFINE_float("holdout", 0.1, "Held-out fraction of the pairs, in [0, 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split, the shuffled-pairs baseline and the "
                             "MLP's jax.random.key.")
_OUT = flags.DEFINE_string("out", None, "Output directory (replaced if it exists).", required=True)
_HIDDEN = flags.DEFINE_list("hidden", ["1024"], "MLP hidden widths, comma-separated (--model=mlp).")
_STEPS = flags.DEFINE_integer("steps", 2000, "MLP Adam steps (--model=mlp).")
_LR = flags.DEFINE_float("lr", 1e-3, "MLP Adam learning rate (--model=mlp).")
_BATCH = flags.DEFINE_integer("batch", 256, "MLP minibatch size (--model=mlp).")


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(
      __name__)})
  data = pairs.load(_PAIRS.value)
  mlp_kwargs = {}
  if _MODEL.value == "mlp":
    mlp_kwargs = dict(hidden=tuple(int(h) for h in _HIDDEN.value), steps=_STEPS.value,
                      lr=_LR.value, batch=_BATCH.value)
  params, metrics = link.fit_and_evaluate(data["r"], data["w"], model=_MODEL.value,
                                          alpha=_ALPHA.value, holdout=_HOLDOUT.value,
                                          seed=_SEED.value, **mlp_kwargs)
  metrics["pairs"] = str(pathlib.Path(_PAIRS.value).absolute())
  out = pathlib.Path(_OUT.value)
  link.save(out, params, metrics)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
  logging.info("metrics: %s", metrics)
  logging.info("wrote %s", out)


if __name__ == "__main__":
  app.run(main)
