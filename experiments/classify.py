r"""Classifies uint8 images with a converted classifier; writes R, logits, probabilities, argmax.

    python -m experiments.classify --classifier=ckpt/resnet50 --images=imgs.npy --out=cls.npz

Any 'classifier' checkpoint works (ResNet, VGG, AlexNet, DenseNet from `python -m
ports.torchvision`); R is the layer its config's `r_layer` names. Images go through the exact
torchvision eval transform stored in the checkpoint's config (resize/crop), see
`linkjax.classifier`.
"""

import time

from absl import flags, logging

from linkjax import checkpoint, classifier, cli, files, preprocess

_CLASSIFIER = flags.DEFINE_string(
    "classifier", None, "Classifier checkpoint directory (from `python -m ports.torchvision`).",
    required=True)
_IMAGES = flags.DEFINE_string(
    "images", None, "uint8 images [N, H, W, 3]: a .npy, a .npz (one array or one named "
    "'images') or a folder of .png files (sorted by name, all the same size).", required=True)
_OUT = flags.DEFINE_string(
    "out", None, "output .npz with r [N, R] float32 (the classifier's representation layer), "
    "logits [N, K] float32, probs [N, K] float32 (softmax) and pred [N] int32.", required=True)
_BATCH = flags.DEFINE_integer(
    "batch", 32, "images per forward pass (the last batch is padded; default 32).", lower_bound=1)


def main(argv):
  del argv
  logging.info("flags: classifier=%s images=%s out=%s batch=%d", _CLASSIFIER.value,
               _IMAGES.value, _OUT.value, _BATCH.value)
  images = preprocess.read_images(_IMAGES.value)
  model = checkpoint.load(_CLASSIFIER.value, role="classifier")
  logging.info("%d images of %dx%d; classifier %s", images.shape[0], images.shape[1],
               images.shape[2], model.config)
  t0 = time.time()
  n_batches = -(-images.shape[0] // _BATCH.value)
  every = max(1, n_batches // 20)  # about 20 progress lines for large inputs

  def log_progress(done: int, total: int) -> None:
    batch_idx = -(-done // _BATCH.value)
    if batch_idx % every == 0 or done == total:
      logging.info("classified %d/%d images (%.1f s)", done, total, time.time() - t0)

  out = classifier.classify_batches(model, images, batch=_BATCH.value, log_fn=log_progress)
  files.write_npz(_OUT.value, out)
  logging.info("wrote %s", _OUT.value)


if __name__ == "__main__":
  cli.run(main)
