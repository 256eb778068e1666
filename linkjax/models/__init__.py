"""Model architectures and their registry.

Every architecture a checkpoint can hold is one line of `ARCHITECTURES`: its module, model class,
config class and role. The role says what a model is *for* ('classifier', 'generator',
'segmenter'); consumers ask for a role (`checkpoint.load(path, role='classifier')`), never for an
architecture by name, so a new classifier family needs its model file, its converter table and
one line here. Modules are imported lazily, on first use of their line.

The classifier contract (every 'classifier' model):
  * `config.resize`, `config.crop`: the eval transform's geometry (`linkjax.classifier`);
    `config.num_classes`; `config.r_layer`: which layer is R.
  * `model(x) -> (logits [B, K], acts)` on normalised NHWC input, with `acts['r']` [B, R] the
    representation layer and `acts['r_2d']` [B, h, w, C] the spatial map R is computed from
    (Grad-CAM explains it), plus named intermediates.
  * `model.to_r(r_2d) -> r` and `model.head(r) -> logits`: pure functions such that
    `head(to_r(acts['r_2d'])) == logits`.
"""

from __future__ import annotations

import dataclasses
import importlib

ROLES = ("classifier", "generator", "segmenter")
R_LAYERS = ("original", "penultimate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
  """The fields every classifier config has (its family's config derives from this).

  Attributes:
    num_classes: outputs of the final linear layer.
    resize: shorter-side resize of the eval transform (None: no resize).
    crop: centre crop of the eval transform (None: no crop).
    r_layer: the representation layer R: 'original' (the reference's: the output of all
      children but the last, flattened) or 'penultimate' (the input of the last linear layer).
  """
  num_classes: int = 1000
  resize: int | None = 256
  crop: int | None = 224
  r_layer: str = "original"

  def __post_init__(self):
    if self.r_layer not in R_LAYERS:
      raise ValueError(f"r_layer must be one of {R_LAYERS}, got {self.r_layer!r}")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    for name in ("resize", "crop"):
      v = getattr(self, name)
      if v is not None and not 1 <= v <= 4096:
        raise ValueError(f"{name} must be None or in [1, 4096], got {v}")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One registry line: where the model lives and what it is for."""
  module: str
  model: str
  config: str
  role: str

  def classes(self) -> tuple[type, type]:
    """(model class, config class), importing the module."""
    mod = importlib.import_module(self.module)
    return getattr(mod, self.model), getattr(mod, self.config)


ARCHITECTURES: dict[str, Architecture] = {
    "resnet": Architecture("linkjax.models.resnet", "ResNet", "ResNetConfig", "classifier"),
    "vgg": Architecture("linkjax.models.vgg", "VGG", "VGGConfig", "classifier"),
    "alexnet": Architecture("linkjax.models.alexnet", "AlexNet", "AlexNetConfig", "classifier"),
    "densenet": Architecture("linkjax.models.densenet", "DenseNet", "DenseNetConfig",
                             "classifier"),
    "stylegan_xl": Architecture("linkjax.models.stylegan_xl", "StyleGANXL", "StyleGANXLConfig",
                                "generator"),
    "segmenter": Architecture("linkjax.models.segmenter", "FewShotSegmenter", "SegmenterConfig",
                              "segmenter"),
}


def arch_of(model_or_config: object) -> str:
  """The registered architecture name of a model or config instance."""
  cls = type(model_or_config)
  for name, a in ARCHITECTURES.items():
    if cls.__module__ == a.module and cls.__name__ in (a.model, a.config):
      return name
  raise KeyError(f"{cls.__module__}.{cls.__name__} is not a registered architecture")


def role_of(model_or_config: object) -> str:
  """The role ('classifier', 'generator', 'segmenter') of a model or config instance."""
  return ARCHITECTURES[arch_of(model_or_config)].role
