"""The built-in miniature world: procedural 64x64 animals in 5 breeds with exact part masks."""

from linkjax.miniworld.render import (
    CLASS_NAMES,
    NUM_CLASSES,
    PAINT_ORDER,
    PARAM_NAMES,
    PARAMS,
    PART_NAMES,
    SIZE,
    THETA_DIM,
    part_colours,
    physical,
    render,
    sample_theta,
    theta_from_noise,
)

__all__ = [
    "CLASS_NAMES", "NUM_CLASSES", "PAINT_ORDER", "PARAM_NAMES", "PARAMS", "PART_NAMES", "SIZE",
    "THETA_DIM", "part_colours", "physical", "render", "sample_theta", "theta_from_noise",
]
