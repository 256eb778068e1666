r"""Counterfactual search in R with trajectories, decision boundary and Grad-CAM (paper Fig. 7).

Picks the first --n_samples pairs of class --orig_class from a pair directory, searches (batched,
one compiled function) for shifts of r that make the classifier see --target_class in the
generated image, and writes per pair: frames along the path (target-probability inset, frame
colour = predicted class), the probability curve, metric trajectories with the decision
boundary, Grad-CAM panels, the motion field across the decision boundary and a CSV; plus
summary.json. All logic lives in
linkjax.counterfactual.

Example:
  python -m experiments.counterfactual --pairs=runs/pairs --link=runs/link --generator=ckpt/sgxl \
      --classifier=ckpt/resnet50 --orig_class=254 --target_class=151 --out=runs/cf
"""

from absl import flags, logging

from linkjax import bundle, cli
from linkjax import counterfactual as cf

_D = cf.ExperimentConfig()
_S = cf.SearchConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("pairs", None, "Pair directory (linkjax.pairs.load): r and class_idx are "
                    "used.", required=True)
flags.DEFINE_string("link", None, "Linking-network directory (linkjax.link.save).", required=True)
flags.DEFINE_string("generator", None, "StyleGAN-XL checkpoint directory.", required=True)
flags.DEFINE_string("classifier", None, "Classifier checkpoint directory; its config gives the "
                    "input transform (resize/crop).", required=True)
flags.DEFINE_string("segmenter", None, "Optional segmenter checkpoint directory; enables the part "
                    "metrics (area, luminance, entropy, eccentricity, angle) along the path.")
flags.DEFINE_integer("orig_class", _D.orig_class, "Class of the source images (ImageNet index; "
                     "254 = pug).")
flags.DEFINE_integer("target_class", _D.target_class, "Target class (ImageNet index; 151 = "
                     "Chihuahua).")
flags.DEFINE_integer("n_samples", _D.n_samples, "Number of pairs of --orig_class to search from "
                     "(the first ones).")
flags.DEFINE_integer("max_steps", _S.max_steps, "Maximum gradient steps per pair.")
flags.DEFINE_float("lr", _S.learning_rate, "Learning rate of the optimiser.")
flags.DEFINE_float("init_scale", _D.init_scale, "Initial shift ~ init_scale * U[0, 1) per unit, "
                   "applied as r - shift (the reference uses 1.0; use less when r's units are "
                   "much smaller than 1, or the start erases r).")
flags.DEFINE_enum("optimizer", _S.optimizer, ["sgd", "adam"], "Optax optimiser (sgd = the "
                  "reference's plain gradient descent).")
flags.DEFINE_float("lambda_orig", _S.lambda_orig, "Weight of the original-class logit in the loss.")
flags.DEFINE_float("lambda_cos", _S.lambda_cos, "Weight of cos(f(r), f(r')) in the loss.")
flags.DEFINE_integer("check_every", _S.check_every, "Steps per render-and-classify check window.")
flags.DEFINE_enum("check_mode", _S.check_mode, list(cf.CHECK_MODES), "window: every iterate "
                  "of a window is rendered in one batched call (identical to checking every step, "
                  "as the reference does); last: only the window's last iterate is checked and the "
                  "first flip is then located inside the window (about check_every times fewer "
                  "renders; misses a target touch that is left again within one window); head: "
                  "only the iterates whose image could be the target are rendered, in step order "
                  "(screen: the last rendered image's logits moved by the head's logit change, "
                  "plus --screen_lipschitz times the latent distance since that image; the same "
                  "stop step as checking every step whenever the screen passes the flip step).")
flags.DEFINE_float("screen_head", _S.screen_head, "check_mode=head: weight of the head's logit "
                   "change since the last rendered iterate in the screen's margin bound.")
flags.DEFINE_float("screen_lipschitz", _S.screen_lipschitz, "check_mode=head: margin slack per "
                   "unit of ||w - w_last_rendered|| (logits per unit of W); larger is safer and "
                   "renders more.")
flags.DEFINE_float("screen_slack", _S.screen_slack, "check_mode=head: constant margin slack "
                   "(logits).")
flags.DEFINE_integer("screen_force_every", _S.screen_force_every, "check_mode=head: render a "
                     "pair's window-last iterate after this many windows without a render "
                     "(0: never).")
flags.DEFINE_integer("seed", _D.seed, "Seed of the initial shifts (U[0,1), r' = r - shift).")
flags.DEFINE_string("out", None, "Output directory for figures, CSVs and summary.json.",
                    required=True)
flags.DEFINE_integer("n_frames", _D.n_frames, "Frames rendered along each path (incl. the two "
                     "around the decision boundary).")
flags.DEFINE_integer("max_points", _D.max_points, "Path points analysed per pair before the "
                     "boundary is refined to the exact step.")
flags.DEFINE_bool("motion", _D.motion, "Draw the motion field (linkjax.motion: global affine "
                  "and local flow) between the frames just before and just after the decision "
                  "boundary, and from the original image to the first flipped frame "
                  "(pair{i}_flow.png); sizes in pixels in summary.json.")
flags.DEFINE_bool("lpips", _D.lpips, "Compute the LPIPS perceptual distance along the path "
                  "(needs images of at least 32 px).")


def main(argv):
  del argv
  cli.log_flags(__name__)
  cfg = cf.ExperimentConfig(
      orig_class=FLAGS.orig_class, target_class=FLAGS.target_class, n_samples=FLAGS.n_samples,
      seed=FLAGS.seed, n_frames=FLAGS.n_frames, max_points=FLAGS.max_points, lpips=FLAGS.lpips,
      init_scale=FLAGS.init_scale, motion=FLAGS.motion, search=cf.SearchConfig(
          lambda_orig=FLAGS.lambda_orig, lambda_cos=FLAGS.lambda_cos, optimizer=FLAGS.optimizer,
          learning_rate=FLAGS.lr, max_steps=FLAGS.max_steps, check_every=FLAGS.check_every,
          check_mode=FLAGS.check_mode, screen_head=FLAGS.screen_head,
          screen_lipschitz=FLAGS.screen_lipschitz, screen_slack=FLAGS.screen_slack,
          screen_force_every=FLAGS.screen_force_every))
  models, params = bundle.ModelBundle.load(generator=FLAGS.generator,
                                           classifier=FLAGS.classifier,
                                           segmenter=FLAGS.segmenter, link=FLAGS.link)
  summary = cf.run_experiment(FLAGS.pairs, models, params, FLAGS.out, cfg)
  logging.info("success rate %.3f over %d pairs; wrote %s", summary["success_rate"],
               summary["n_pairs"], FLAGS.out)


if __name__ == "__main__":
  cli.run(main)
