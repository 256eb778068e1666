r"""Classifies uint8 images with a converted classifier; writes R, logits, probabilities, argmax.

    python -m experiments.classify --classifier=ckpt/resnet50 --images=imgs.npy --out=cls.npz

Any 'classifier' checkpoint works (ResNet, VGG, AlexNet, DenseNet from `python -m
ports.torchvision`); R is the layer its config's `r_layer` names. Images go through the exact
torchvision eval transform stored in the checkpoint's config (resize/crop), see
`linkjax.preprocess.classifier_input`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from linkjax import checkpoint, classifier, preprocess

_CLASSIFIER = flags.DEFINE_string(
    "classifier", None, "Classifier checkpoint directory (from `python -m ports.torchvision`).")
_IMAGES = flags.DEFINE_string(
    "images", None, "uint8 images [N, H, W, 3]: a .npy, a .npz (one array or one named "
    "'images') or a folder of .png files (sorted by name, all the same size).")
_OUT = flags.DEFINE_string(
    "out", None, "output .npz with r [N, R] float32 (the classifier's representation layer), "
    "logits [N, K] float32, probs [N, K] float32 (softmax) and pred [N] int32.")
_BATCH = flags.DEFINE_integer(
    "batch", 32, "images per forward pass (the last batch is zero-padded; default 32).", lower_bound=1)

flags.mark_flags_as_required(["classifier", "images", "out"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("flags: classifier=%s images=%s out=%s batch=%d", _CLASSIFIER.value,
               _IMAGES.value, _OUT.value, _BATCH.value)
  try:
    images = preprocess.read_images(_IMAGES.value)
  except ValueError as e:
    raise SystemExit(f"error: --images: {e}") from e
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
  np.savez(_OUT.value, **out)
  logging.info("wrote %s", _OUT.value)


if __name__ == "__main__":
  app.run(main)
