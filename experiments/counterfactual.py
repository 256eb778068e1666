"""Counterfactual search in R with trajectories, decision boundary and Grad-CAM (paper Fig. 7).

Picks the first --n_samples pairs of class --orig_class from a pair directory, searches (batched, one
compiled function) for shifts of r that make the classifier see --target_class in the generated image,
and writes per pair: frames along the path (target-probability inset, frame colour = predicted class),
the probability curve, metric trajectories with the decision boundary, Grad-CAM panels and a CSV;
plus summary.json. All logic lives in linkjax.counterfactual.

Example:
  python -m experiments.counterfactual --pairs=runs/pairs --link=runs/link --generator=ckpt/sgxl \
      --classifier=ckpt/resnet50 --orig_class=254 --target_class=151 --out=runs/cf
"""

from absl import app, flags, logging

from linkjax import counterfactual

FLAGS = flags.FLAGS
flags.DEFINE_string("pairs", None, "Pair directory (linkjax.pairs.load): r and class_idx are used.")
flags.DEFINE_string("link", None, "Linking-network directory (linkjax.link.save).")
flags.DEFINE_string("generator", None, "StyleGAN-XL checkpoint directory (linkjax.checkpoint).")
flags.DEFINE_string("classifier", None, "ResNet checkpoint directory (linkjax.checkpoint); its config "
                    "gives the input transform (resize/crop).")
flags.DEFINE_string("segmenter", None, "Optional segmenter checkpoint directory; enables the part "
                    "metrics (area, luminance, entropy, eccentricity, angle) along the path.")
flags.DEFINE_integer("orig_class", 254, "Class of the source images (ImageNet index; 254 = pug).")
flags.DEFINE_integer("target_class", 151, "Target class (ImageNet index; 151 = Chihuahua).")
flags.DEFINE_integer("n_samples", 8, "Number of pairs of --orig_class to search from (the first ones).")
flags.DEFINE_integer("max_steps", 2000, "Maximum gradient steps per pair.")
flags.DEFINE_float("lr", 0.5, "Learning rate of the optimiser.")
flags.DEFINE_float("init_scale", 1.0, "Initial shift ~ init_scale * U[0, 1) per unit, applied as "
                   "r - shift (the reference uses 1.0; use less when r's units are much smaller "
                   "than 1, or the start erases r).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optax optimiser (sgd = the reference's plain "
                  "gradient descent).")
flags.DEFINE_float("lambda_orig", 0.6, "Weight of the original-class logit in the loss.")
flags.DEFINE_float("lambda_cos", 10.0, "Weight of cos(f(r), f(r')) in the loss.")
flags.DEFINE_integer("check_every", 10, "Steps per render-and-classify check window.")
flags.DEFINE_enum("check_mode", "window", ["window", "last"], "window: every iterate of a window is "
                  "rendered in one batched call (identical to checking every step, as the reference "
                  "does); last: only the window's last iterate is checked and the first flip is then "
                  "located inside the window (about check_every times fewer renders; misses a target "
                  "touch that is left again within one window).")
flags.DEFINE_integer("seed", 0, "Seed of the initial shifts (U[0,1), r' = r - shift).")
flags.DEFINE_string("out", None, "Output directory for figures, CSVs and summary.json.")
flags.DEFINE_integer("n_frames", 8, "Frames rendered along each path (incl. the two around the "
                     "decision boundary).")
flags.DEFINE_integer("max_points", 200, "Path points analysed per pair before the boundary is refined "
                     "to the exact step.")
flags.DEFINE_bool("lpips", True, "Compute the LPIPS perceptual distance along the path (needs "
                  "images of at least 32 px).")
for _name in ("pairs", "link", "generator", "classifier", "out"):
  flags.mark_flag_as_required(_name)


def main(argv):
  del argv
  logging.info("flags: %s", FLAGS.flags_into_string())
  cfg = counterfactual.ExperimentConfig(
      pairs=FLAGS.pairs, link=FLAGS.link, generator=FLAGS.generator, classifier=FLAGS.classifier,
      segmenter=FLAGS.segmenter, out=FLAGS.out, orig_class=FLAGS.orig_class,
      target_class=FLAGS.target_class, n_samples=FLAGS.n_samples, seed=FLAGS.seed,
      n_frames=FLAGS.n_frames, max_points=FLAGS.max_points, lpips=FLAGS.lpips,
      init_scale=FLAGS.init_scale, search=counterfactual.SearchConfig(
          lambda_orig=FLAGS.lambda_orig, lambda_cos=FLAGS.lambda_cos, optimizer=FLAGS.optimizer,
          learning_rate=FLAGS.lr, max_steps=FLAGS.max_steps, check_every=FLAGS.check_every,
          check_mode=FLAGS.check_mode))
  summary = counterfactual.run_experiment(cfg)
  logging.info("success rate %.3f over %d pairs; wrote %s", summary["success_rate"],
               summary["n_pairs"], FLAGS.out)


if __name__ == "__main__":
  app.run(main)
