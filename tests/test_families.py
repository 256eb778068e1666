"""Every pipeline with every classifier family: pairs -> link -> sweep -> counterfactual.

Tiny random instances of ResNet, VGG, AlexNet and DenseNet (torchvision layouts) behind a tiny
random StyleGAN-XL and segmenter; nothing in the pipelines names a family.
"""

import csv

import jax
import numpy as np
import pytest

from linkjax import bundle, checkpoint, cycle, link, pairs, sweep, testing
from linkjax import counterfactual as cf


@pytest.mark.slow
@pytest.mark.parametrize("family,r_layer", [("resnet", "original"), ("vgg", "original"),
                                            ("alexnet", "penultimate"), ("densenet", "original")])
def test_pipelines_run_with_every_family(tmp_path, family, r_layer):
  world = testing.build_tiny_world(tmp_path / "world", seed=1, n_pairs=16, batch=16,
                                   segmenter_labels=3, classifier=family, r_layer=r_layer)
  _, config = checkpoint.read_config(world["classifier"], role="classifier")
  assert config.r_layer == r_layer
  models, params = bundle.ModelBundle.load(generator=world["generator"],
                                           classifier=world["classifier"],
                                           segmenter=world["segmenter"], link=world["link"])
  # Pairs through the generic job (two classes, every draw kept): r has the family's R width.
  got = pairs.generate_pairs(models, params, tmp_path / "pairs", pairs.PairConfig(
      classes=(0, 1), n_per_class=3, seed=0, batch=3, keep="all"))
  r_dim = got["r"].shape[1]
  np.testing.assert_allclose(np.asarray(models.head(params, got["r"])), got["logits"],
                             rtol=1e-4, atol=1e-4)
  metrics = link.fit_from_pairs(tmp_path / "pairs", tmp_path / "link",
                                link.LinkConfig(holdout=0.34))
  assert metrics["n_test"] == 2 and np.isfinite(metrics["test_mse"])
  summary = cycle.run(tmp_path / "pairs", tmp_path / "link", models, params, tmp_path / "cycle",
                      cycle.CycleConfig(n=2, batch=2, lpips=False, n_show=1))
  assert summary["n"] == 2
  res = sweep.run(tmp_path / "pairs", models, params, tmp_path / "sweep", sweep.SweepConfig(
      units=f"0,{r_dim - 1}", samples_per_class=1, steps=2, chunk=4, strip_units=(0,)))
  arrays = res["arrays"]
  assert arrays["metrics"].shape[:3] == (2, 2, 2)
  assert np.all((arrays["probs"] >= 0) & (arrays["probs"] <= 1))
  assert (tmp_path / "sweep" / "strips" / "unit_0000.png").exists()
  out = tmp_path / "cf"
  summary = cf.run_experiment(tmp_path / "pairs", models, params, out, cf.ExperimentConfig(
      orig_class=0, target_class=1, n_samples=1, n_frames=3, max_points=4, lpips=False,
      init_scale=0.1, search=cf.SearchConfig(max_steps=3, check_every=2)))
  assert summary["n_pairs"] == 1
  assert (out / "pair0_gradcam.png").stat().st_size > 1000
  with open(out / "pair0.csv") as f:
    assert "label1_area" in next(csv.DictReader(f))
  # Grad-CAM on r_2d: maps in [0, 1] at the classifier's input size.
  w = jax.numpy.asarray(got["w"][:2])
  cam = bundle.grad_cam(models, params, w, jax.numpy.asarray([0, 1]))
  assert cam["cam"].shape == (2, 64, 64)
  assert float(cam["cam"].min()) >= 0 and float(cam["cam"].max()) <= 1
