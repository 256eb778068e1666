"""The model bundle: generator, classifier, segmenter and link as pure functions of one pytree.

Every pipeline of the method composes the same pieces,

    z, class -> ws (mapping, truncation psi) -> image (synthesis, + features)
    image -> uint8 -> classifier input (the classifier's own resize/crop) -> (logits, acts['r'])
    features -> part masks (segmenter);   r -> w (link)

and `ModelBundle` is that composition written once. It holds only static things (the NNX
graphdefs and configs; it is hashable, so it is a static argument of `jax.jit`); the weights
travel separately as one params pytree `{'generator': state, 'classifier': state, 'segmenter':
state, 'link': link params}` (members may be absent), so compiled functions take new weights
without recompiling and never bake parameters in as constants.

Pairs, sweeps, the cycle, counterfactual search and the world checks call the methods here; a
toy world in `linkjax.testing` implements the same methods for tests.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from linkjax import checkpoint
from linkjax import classifier as classifier_lib
from linkjax import gradcam
from linkjax import link as link_lib
from linkjax import preprocess
from linkjax.models import segmenter as segmenter_lib
from linkjax.models import stylegan_xl

Params = dict[str, Any]


class BundleError(ValueError):
  """A bundle lacks a model that a computation needs, or its models do not fit together."""


@dataclasses.dataclass(frozen=True)
class ModelBundle:
  """Static halves of the models (graphdefs + configs); see the module docstring.

  Attributes:
    generator, classifier, segmenter: `nnx.split` graphdefs, or None when absent.
    generator_config, classifier_config, segmenter_config: their configs.
  """
  generator: nnx.GraphDef | None = None
  classifier: nnx.GraphDef | None = None
  segmenter: nnx.GraphDef | None = None
  generator_config: Any = None
  classifier_config: Any = None
  segmenter_config: Any = None

  # --- construction ------------------------------------------------------------------------

  @classmethod
  def from_models(cls, *, generator: nnx.Module | None = None,
                  classifier: nnx.Module | None = None, segmenter: nnx.Module | None = None,
                  link: Any = None) -> tuple[ModelBundle, Params]:
    """Splits models into (bundle, params); `link` is a link params pytree (`link.load`)."""
    fields: dict[str, Any] = {}
    params: Params = {}
    for name, model in (("generator", generator), ("classifier", classifier),
                        ("segmenter", segmenter)):
      if model is None:
        continue
      graphdef, state = nnx.split(model)
      fields[name] = graphdef
      fields[f"{name}_config"] = model.config
      params[name] = state
    if link is not None:
      params["link"] = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), link)
    bundle = cls(**fields)
    bundle._check_fit()
    return bundle, params

  @classmethod
  def load(cls, *, generator: str | pathlib.Path | None = None,
           classifier: str | pathlib.Path | None = None,
           segmenter: str | pathlib.Path | None = None,
           link: str | pathlib.Path | None = None) -> tuple[ModelBundle, Params]:
    """Loads checkpoints by role (generator, classifier, segmenter) and a link directory."""
    return cls.from_models(
        generator=checkpoint.load(generator, role="generator") if generator else None,
        classifier=checkpoint.load(classifier, role="classifier") if classifier else None,
        segmenter=checkpoint.load(segmenter, role="segmenter") if segmenter else None,
        link=link_lib.load(link)[0] if link else None)

  def _check_fit(self) -> None:
    g, s = self.generator_config, self.segmenter_config
    if g is not None and s is not None:
      missing = [n for n in s.feature_layers if n not in g.layer_names]
      if missing:
        raise BundleError(f"the segmenter reads generator layers {missing[:3]} that this "
                          "generator does not have: they were not trained together")

  def _need(self, *names: str) -> None:
    missing = [n for n in names if getattr(self, n) is None]
    if missing:
      raise BundleError(f"this computation needs the {', '.join(missing)}, which the bundle "
                        "lacks")

  # --- facts -------------------------------------------------------------------------------

  @property
  def z_dim(self) -> int:
    return int(self.generator_config.z_dim)

  @property
  def num_classes(self) -> int:
    """Classes of the classifier (else of the generator)."""
    if self.classifier_config is not None:
      return int(self.classifier_config.num_classes)
    return int(self.generator_config.c_dim)

  @property
  def n_labels(self) -> int:
    """Segmenter labels including background."""
    return int(self.segmenter_config.n_labels)

  @property
  def label_names(self) -> tuple[str, ...]:
    """The segmenter's label names (background first); 'label<i>' where none were stored."""
    names = tuple(self.segmenter_config.label_names)
    if names:
      return names
    return ("background",) + tuple(f"label{i}" for i in range(1, self.n_labels))

  @property
  def mask_resolution(self) -> int:
    return int(self.segmenter_config.resolution)

  def describe(self) -> dict[str, Any]:
    """A JSON-serialisable description of the models' geometry (part of run records)."""
    out: dict[str, Any] = {}
    if self.generator_config is not None:
      g = self.generator_config
      out.update(num_ws=int(g.num_ws), img_resolution=int(g.img_resolution),
                 z_dim=int(g.z_dim), w_dim=int(g.w_dim))
    if self.classifier_config is not None:
      c = self.classifier_config
      out.update(classifier=type(c).__name__, resize=c.resize, crop=c.crop,
                 r_layer=getattr(c, "r_layer", "original"))
    if self.segmenter_config is not None:
      s = self.segmenter_config
      out.update(segmenter_resolution=int(s.resolution), feature_layers=list(s.feature_layers),
                 label_names=list(self.label_names))
    return out

  # --- pieces (pure; call inside jit) ------------------------------------------------------

  def mapping(self, params: Params, z: jax.Array, class_idx: jax.Array, psi: float = 1.0,
              cutoff: int | None = None) -> jax.Array:
    """z [B, z_dim], class_idx [B] -> ws [B, num_ws, w_dim] (per-class truncation psi)."""
    self._need("generator")
    g = nnx.merge(self.generator, params["generator"])
    return g.mapping(z, class_idx, psi=psi, cutoff=cutoff)

  def render(self, params: Params, w: jax.Array, features: bool = False) -> Any:
    """w [B, w_dim] (tiled to every row) or ws [B, num_ws, w_dim] -> images [B, 3, H, W] in
    ~[-1, 1] (NCHW), and with `features` the synthesis features {layer: [B, C, h, w]}."""
    self._need("generator")
    g = nnx.merge(self.generator, params["generator"])
    ws = stylegan_xl.broadcast_w(w, g.config.num_ws) if w.ndim == 2 else w
    return g.synthesis(ws, return_features=features)

  def classifier_model(self, params: Params) -> nnx.Module:
    self._need("classifier")
    return nnx.merge(self.classifier, params["classifier"])

  def classify(self, params: Params, images: jax.Array, differentiable: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Generator images [B, 3, H, W] -> (logits [B, K], acts with 'r', 'r_2d').

    The exact path quantises to uint8 as the reference does (`to_uint8`); `differentiable`
    takes the float path with the same geometry, for gradients through the classifier.
    """
    model = self.classifier_model(params)
    if differentiable:
      x = classifier_lib.model_input_float(model.config, images)
    else:
      x = classifier_lib.model_input(model.config, preprocess.to_uint8(images))
    return model(x)

  def classify_uint8(self, params: Params, images_uint8: jax.Array
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """uint8 images [B, H, W, 3] -> (logits, acts) through the exact input path."""
    model = self.classifier_model(params)
    return model(classifier_lib.model_input(model.config, images_uint8))

  def represent(self, params: Params, images: jax.Array) -> jax.Array:
    """Generator images -> r [B, R], the classifier's representation layer."""
    return self.classify(params, images)[1]["r"]

  def head(self, params: Params, r: jax.Array) -> jax.Array:
    """The classifier from R on: r [B, R] -> logits [B, K]."""
    return self.classifier_model(params).head(r)

  def link(self, params: Params, r: jax.Array) -> jax.Array:
    """The linking network f: r [B, R] -> w [B, w_dim]."""
    if "link" not in params:
      raise BundleError("this computation needs the link, which the bundle lacks")
    return link_lib.predict(params["link"], r)

  def segment(self, params: Params, features: dict[str, jax.Array]) -> jax.Array:
    """Synthesis features -> part labels [B, R, R] int32 at the segmenter's resolution."""
    self._need("segmenter")
    seg = nnx.merge(self.segmenter, params["segmenter"])
    return segmenter_lib.predict_masks(
        seg, segmenter_lib.select_features(features, seg.config.feature_layers))

  def at_mask_resolution(self, images_uint8: jax.Array) -> jax.Array:
    """uint8 images resized (Pillow's bilinear, exact) to the segmenter's resolution."""
    res = self.mask_resolution
    if images_uint8.shape[1] != images_uint8.shape[2]:
      raise BundleError(f"expected square images, got {tuple(images_uint8.shape)}")
    return images_uint8 if images_uint8.shape[1] == res else preprocess.resize_uint8(
        images_uint8, res)

  # --- compositions ------------------------------------------------------------------------

  def render_classify(self, params: Params, w: jax.Array) -> jax.Array:
    """w [B, w_dim] -> logits [B, K] of the generated image (exact uint8 path)."""
    return self.classify(params, self.render(params, w))[0]

  def pair_outputs(self, params: Params, z: jax.Array, class_idx: jax.Array,
                   psi: float = 1.0) -> dict[str, jax.Array]:
    """The paper's pairs: z -> ws (psi) -> image -> classifier: {'w' = ws[:, 0], 'r', 'logits'}."""
    ws = self.mapping(params, z, class_idx, psi=psi)
    logits, acts = self.classify(params, self.render(params, ws))
    return {"w": ws[:, 0], "r": acts["r"], "logits": logits}

  def render_analyse(self, params: Params, w: jax.Array) -> dict[str, jax.Array]:
    """w -> 'images' (NCHW float), 'uint8', 'logits', and with a segmenter 'masks' and the
    uint8 'mask_images' at the mask resolution (what the part metrics read)."""
    images, feats = self.render(params, w, features=True)
    u8 = preprocess.to_uint8(images)
    out = {"images": images, "uint8": u8, "logits": self.classify_uint8(params, u8)[0]}
    if self.segmenter is not None:
      out["masks"] = self.segment(params, feats)
      out["mask_images"] = self.at_mask_resolution(u8)
    return out

  def sweep_outputs(self, params: Params, r: jax.Array) -> dict[str, jax.Array]:
    """r' -> link -> image -> {'probs' [B, K], 'masks' [B, R, R], 'images' [B, R, R, 3] uint8}."""
    out = self.render_analyse(params, self.link(params, r))
    return {"probs": jax.nn.softmax(out["logits"], axis=-1), "masks": out["masks"],
            "images": out["mask_images"]}

  def grad_cam(self, params: Params, w: jax.Array, class_idx: jax.Array) -> dict[str, jax.Array]:
    """Grad-CAM of `class_idx` on the classifier's `r_2d` map of the image generated from w.

    Returns:
      {'cam': [B, h, w] in [0, 1] at the classifier's input size, 'view': [B, h, w, 3] the
       classifier's (resized, cropped, de-normalised) view of the image}.
    """
    model = self.classifier_model(params)
    x = classifier_lib.model_input(model.config, preprocess.to_uint8(self.render(params, w)))
    _, acts = model(x)
    cam = gradcam.grad_cam(lambda a: model.head(model.to_r(a)), acts["r_2d"], class_idx,
                           out_size=x.shape[1:3], normalize=True)
    return {"cam": cam, "view": preprocess.denormalize(x)}


# --- compiled entry points (the bundle is static: one compilation per bundle and shape) -------

@functools.partial(jax.jit, static_argnums=0)
def render_analyse(bundle: ModelBundle, params: Params, w: jax.Array) -> dict[str, jax.Array]:
  return bundle.render_analyse(params, w)


@functools.partial(jax.jit, static_argnums=0)
def analyse_r(bundle: ModelBundle, params: Params, r: jax.Array) -> dict[str, jax.Array]:
  """r' -> `render_analyse` of the linked latent f(relu(r'))."""
  return bundle.render_analyse(params, bundle.link(params, jax.nn.relu(r)))


@functools.partial(jax.jit, static_argnums=0)
def render_and_represent(bundle: ModelBundle, params: Params, w: jax.Array
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """w -> (images [B, 3, H, W], r [B, R], logits [B, K])."""
  images = bundle.render(params, w)
  logits, acts = bundle.classify(params, images)
  return images, acts["r"], logits


@functools.partial(jax.jit, static_argnums=0)
def grad_cam(bundle: ModelBundle, params: Params, w: jax.Array,
             class_idx: jax.Array) -> dict[str, jax.Array]:
  return bundle.grad_cam(params, w, class_idx)
