r"""Generates (w, r) pairs: z -> StyleGAN-XL -> image -> ResNet -> (r, logits), resumable.

  python -m experiments.make_pairs --generator=ckpt/sgxl256 --classifier=ckpt/resnet50 \
      --classes=232,254,151,197,178 --n_per_class=5000 --psi=0.7 --seed=0 --batch=64 \
      --keep=correct --out=out/pairs

Rerunning the same command after an interruption resumes from the finished shards and gives the
same pairs as an uninterrupted run. See `linkjax.pairs` for the file layout.
"""

import os

from absl import app
from absl import flags
from absl import logging

_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Converted ResNet checkpoint directory.")
_CLASSES = flags.DEFINE_list("classes", ["232", "254", "151", "197", "178"],
                             "Comma-separated ImageNet class indices, in output order.")
_N_PER_CLASS = flags.DEFINE_integer("n_per_class", 5000, "Pairs to keep per class.")
_PSI = flags.DEFINE_float("psi", 0.7, "Truncation psi (towards the class's mean w).")
_SEED = flags.DEFINE_integer("seed", 0, "Latent seed: z = normal(fold_in(fold_in(key(seed), "
                             "class), draw_index)).")
_BATCH = flags.DEFINE_integer("batch", 64, "Draw indices per block (one shard file per block); "
                              "padded to a multiple of the device count.")
_KEEP = flags.DEFINE_enum("keep", "correct", ["correct", "all"],
                          "'correct': keep a draw only if the classifier's argmax equals its "
                          "class; 'all': keep every draw.")
_MAX_DRAWS = flags.DEFINE_integer("max_draws_per_class", None,
                                  "Give up on a class after this many draws and keep what was "
                                  "found (default: 10 x n_per_class).")
_OUT = flags.DEFINE_string("out", None, "Output directory (pairs.npz, run.json, shards/).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a previous run in --out that used other "
                               "arguments instead of failing.")
_TOY_WORLD = flags.DEFINE_bool("toy_world", False, "Testing/benchmarking: use a tiny synthetic "
                               "linear pipeline (linkjax.pairs.toy_pipeline) instead of "
                               "--generator/--classifier.")
_TOY_DIMS = flags.DEFINE_list("toy_dims", ["8", "6", "5", "1000"],
                              "With --toy_world: z_dim, w_dim, r_dim, num_classes.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("generator", "classifier", "classes", "n_per_class", "psi", "seed", "batch",
               "keep", "max_draws_per_class", "out", "overwrite", "toy_world"):
    logging.info("--%s=%s", name, flags.FLAGS[name].value)
  import jax  # noqa: PLC0415  (after flag parsing, so --help is fast)
  from linkjax import pairs  # noqa: PLC0415

  logging.info("devices: %s", jax.devices())
  if _TOY_WORLD.value:
    z_dim, w_dim, r_dim, n_cls = (int(v) for v in _TOY_DIMS.value)
    pipeline = pairs.toy_pipeline(z_dim=z_dim, w_dim=w_dim, r_dim=r_dim, num_classes=n_cls)
    run_info = {"toy_world": [z_dim, w_dim, r_dim, n_cls]}
  else:
    if not _GENERATOR.value or not _CLASSIFIER.value:
      raise app.UsageError("--generator and --classifier are required (or --toy_world)")
    from linkjax import checkpoint  # noqa: PLC0415

    generator = checkpoint.load(_GENERATOR.value, role="generator")
    classifier = checkpoint.load(_CLASSIFIER.value, role="classifier")
    pipeline = pairs.model_pipeline(generator, classifier, psi=_PSI.value)
    run_info = {"generator": os.path.abspath(_GENERATOR.value),
                "classifier": os.path.abspath(_CLASSIFIER.value), "psi": _PSI.value}
  pairs.generate_pairs(
      pipeline, _OUT.value, classes=[int(c) for c in _CLASSES.value],
      n_per_class=_N_PER_CLASS.value, seed=_SEED.value, batch=_BATCH.value, keep=_KEEP.value,
      max_draws_per_class=_MAX_DRAWS.value, overwrite=_OVERWRITE.value, run_info=run_info)


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
