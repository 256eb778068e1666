r"""Generates (w, r) pairs: z -> StyleGAN-XL -> image -> classifier -> (r, logits), resumable.

  python -m experiments.make_pairs --generator=ckpt/sgxl256 --classifier=ckpt/resnet50 \
      --classes=232,254,151,197,178 --n_per_class=5000 --psi=0.7 --seed=0 --batch=64 \
      --keep=correct --out=out/pairs

Rerunning the same command after an interruption resumes from the finished shards and gives the
same pairs as an uninterrupted run. See `linkjax.pairs` for the file layout. With
--coordinator_address/--num_processes/--process_id (or --distributed_auto) the classes are split
over the processes of a multi-host job (BUILD.md, "Many processes").
"""

import os

from absl import flags, logging

from linkjax import bundle, cli, pairs, testing

_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Converted classifier checkpoint directory.")
_CLASSES = flags.DEFINE_list("classes", ["232", "254", "151", "197", "178"],
                             "Comma-separated class indices, in output order.")
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
_OUT = flags.DEFINE_string("out", None, "Output directory (pairs.npz, run.json, shards/).",
                           required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a previous run in --out that used "
                               "other arguments instead of failing.")
_TOY_WORLD = flags.DEFINE_bool("toy_world", False, "Testing/benchmarking: use a tiny synthetic "
                               "linear pipeline (linkjax.testing.ToyPairs) instead of "
                               "--generator/--classifier.")
_TOY_DIMS = flags.DEFINE_list("toy_dims", ["8", "6", "5", "1000"],
                              "With --toy_world: z_dim, w_dim, r_dim, num_classes.")
cli.define_distributed_flags()


def main(argv):
  del argv
  cli.initialize_distributed()
  cli.log_flags(__name__)
  config = pairs.PairConfig(classes=tuple(int(c) for c in _CLASSES.value),
                            n_per_class=_N_PER_CLASS.value, seed=_SEED.value, batch=_BATCH.value,
                            psi=_PSI.value, keep=_KEEP.value,
                            max_draws_per_class=_MAX_DRAWS.value)
  if _TOY_WORLD.value:
    z_dim, w_dim, r_dim, n_cls = (int(v) for v in _TOY_DIMS.value)
    models = testing.ToyPairs(z_dim=z_dim, w_dim=w_dim, r_dim=r_dim, num_classes=n_cls)
    params, run_info = models.params(), {}
  else:
    cli.require("--toy_world", generator=_GENERATOR.value, classifier=_CLASSIFIER.value)
    models, params = bundle.ModelBundle.load(generator=_GENERATOR.value,
                                             classifier=_CLASSIFIER.value)
    run_info = {"generator": os.path.abspath(_GENERATOR.value),
                "classifier": os.path.abspath(_CLASSIFIER.value)}
  data = pairs.generate_pairs(models, params, _OUT.value, config, overwrite=_OVERWRITE.value,
                              run_info=run_info)
  logging.info("%d pairs in %s", len(data["w"]), _OUT.value)


if __name__ == "__main__":
  cli.run(main)
