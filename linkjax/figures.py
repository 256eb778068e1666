"""Matplotlib figures without pyplot: no global backend state, written atomically.

`matplotlib.figure.Figure` draws with its own Agg canvas, so the library never switches the
user's backend (a notebook keeps its inline display) and never leaks open figures.
"""

from __future__ import annotations

import os
from typing import Any

from matplotlib.figure import Figure

from linkjax import files


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             **kwargs: Any) -> tuple[Figure, Any]:
  """A new figure and its axes (`Figure.subplots` arguments: squeeze, sharey, width_ratios...)."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def figure(figsize: tuple[float, float] | None = None) -> Figure:
  """A new empty figure."""
  return Figure(figsize=figsize)


def save(fig: Figure, path: str | os.PathLike, dpi: int = 100, **kwargs: Any) -> None:
  """Writes the figure as PNG atomically."""
  files.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, **kwargs))
