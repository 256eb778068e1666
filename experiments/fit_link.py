"""Fits a linking network r -> w on a pairs directory and reports held-out metrics.

  python -m experiments.fit_link --pairs=DIR --model=ols --holdout=0.1 --seed=0 --out=DIR

Writes the link checkpoint (linkjax.link.save) to --out and --out/metrics.json.
"""

from absl import flags, logging

from linkjax import cli, link

_D = link.LinkConfig()
_PAIRS = flags.DEFINE_string("pairs", None, "Pairs directory written by experiments.make_pairs "
                             "(reads DIR/pairs.npz).", required=True)
_MODEL = flags.DEFINE_enum("model", _D.model, ["ols", "ridge", "mlp"],
                           "Linking model: least squares with intercept, ridge, or ReLU MLP.")
_ALPHA = flags.DEFINE_float("alpha", _D.alpha, "Ridge L2 penalty (only --model=ridge).")
_HOLDOUT = flags.DEFINE_float("holdout", _D.holdout, "Held-out fraction of the pairs, in [0, 1).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of the split, the shuffled-pairs baseline and "
                             "the MLP's jax.random.key.")
_OUT = flags.DEFINE_string("out", None, "Output link directory; an existing link checkpoint is "
                           "replaced, any other existing folder is refused.", required=True)
_HIDDEN = flags.DEFINE_list("hidden", [str(h) for h in _D.hidden], "MLP hidden widths, "
                            "comma-separated (--model=mlp).")
_STEPS = flags.DEFINE_integer("steps", _D.steps, "MLP Adam steps (--model=mlp).")
_LR = flags.DEFINE_float("lr", _D.lr, "MLP Adam learning rate (--model=mlp).")
_BATCH = flags.DEFINE_integer("batch", _D.batch, "MLP minibatch size (--model=mlp).")


def main(argv):
  del argv
  cli.log_flags(__name__)
  config = link.LinkConfig(model=_MODEL.value, alpha=_ALPHA.value, holdout=_HOLDOUT.value,
                           seed=_SEED.value, hidden=tuple(int(h) for h in _HIDDEN.value),
                           steps=_STEPS.value, lr=_LR.value, batch=_BATCH.value)
  metrics = link.fit_from_pairs(_PAIRS.value, _OUT.value, config)
  logging.info("metrics: %s", metrics)
  logging.info("wrote %s", _OUT.value)


if __name__ == "__main__":
  cli.run(main)
