"""A convolution of nearest-neighbour-resized maps, computed at the maps' own resolution.

The segmenter's first layer convolves feature maps that were nearest-resized (index maps
`rows`, `cols`: output position -> source position) to the output resolution. Along one axis,
output position o of a k-tap convolution with dilation d reads the upsampled signal at
o + d (j - (k-1)/2), i.e. the source at rows[o + d (j - (k-1)/2)]: relative to the anchor
rows[o], each tap j lands on a source offset u_j(o). Outputs with the same offset pattern
(u_0, ..., u_{k-1}) form one "phase" (for an integer factor s and k = 3: o mod s, with phases
1 .. s-2 all alike); taps landing on the same offset are summed into one tap of a smaller,
per-phase kernel. Each pair (row phase, column phase) is then one ordinary convolution over
the *source* map, and every output position is picked from its phase's result at its anchor
(a depth-to-space / sub-pixel assembly, written as a gather so that any index map works).

Zero padding belongs to the upsampled domain: a tap outside [0, R) is given an offset that
lands outside the source (-1 - rows[o] or in_size - rows[o]), where the per-phase convolution's
own zero padding supplies the zero. The result equals the convolution of the resized map up to
float32 rounding (taps are summed before, not after, the multiplication).

Cost: (sum over row phases of their kernel extent) x (same for columns) x source pixels, e.g.
a 3x3 kernel over a x4 map: 5 x 5 = 25 multiply-adds per source pixel instead of 9 x 16 = 144;
x2: 16 instead of 36; x1: 9. Where the phase decomposition would cost more than the direct
convolution (non-integer or downsampling index maps with many patterns) the map is resized and
convolved directly (`nearest_upsampled_conv` decides per call, statically).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass(frozen=True)
class AxisPlan:
  """The phases of one axis of a convolution over an index-resized signal.

  Attributes:
    patterns: per phase, the source offset of each kernel tap (relative to the anchor).
    phase: [R] int, the phase of each output position.
    anchor: [R] int, the source position each output position is anchored at.
    in_size: source length.
  """
  patterns: tuple[tuple[int, ...], ...]
  phase: np.ndarray
  anchor: np.ndarray
  in_size: int

  @property
  def extent(self) -> int:
    """Sum over phases of the per-phase kernel length (max offset - min offset + 1)."""
    return sum(max(p) - min(p) + 1 for p in self.patterns)


def axis_plan(indices: Sequence[int] | np.ndarray, in_size: int, kernel_size: int = 3,
              dilation: int = 1) -> AxisPlan:
  """Phases of a 'same'-padded k-tap convolution over `signal[indices]` along one axis.

  Args:
    indices: [R] source position of each output position (values in [0, in_size)).
    in_size: source length.
    kernel_size: k, odd.
    dilation: tap spacing in output positions.
  Returns:
    the `AxisPlan`.
  """
  idx = np.asarray(indices, np.int64)
  if idx.ndim != 1 or idx.min() < 0 or idx.max() >= in_size:
    raise ValueError(f"indices must be 1-D in [0, {in_size}), got {idx}")
  if kernel_size % 2 != 1:
    raise ValueError(f"kernel_size must be odd, got {kernel_size}")
  n_out, half = idx.shape[0], (kernel_size - 1) // 2
  patterns: dict[tuple[int, ...], int] = {}
  phase = np.zeros(n_out, np.int64)
  for o in range(n_out):
    anchor = idx[o]
    offsets = []
    for j in range(kernel_size):
      t = o + dilation * (j - half)
      if t < 0:
        offsets.append(-1 - anchor)  # reads the source's zero padding below 0
      elif t >= n_out:
        offsets.append(in_size - anchor)  # ... above in_size - 1
      else:
        offsets.append(int(idx[t] - anchor))
    phase[o] = patterns.setdefault(tuple(int(u) for u in offsets), len(patterns))
  return AxisPlan(patterns=tuple(patterns), phase=phase, anchor=idx, in_size=int(in_size))


def _tap_matrix(pattern: tuple[int, ...]) -> np.ndarray:
  """[extent, k] 0/1: T[u - min, j] = 1 where tap j lands on source offset u."""
  lo = min(pattern)
  t = np.zeros((max(pattern) - lo + 1, len(pattern)), np.float32)
  for j, u in enumerate(pattern):
    t[u - lo, j] = 1.0
  return t


def _phase_kernel(kernel: jax.Array, pattern_r: tuple[int, ...],
                  pattern_c: tuple[int, ...]) -> jax.Array:
  """[ext_r, ext_c, I, O]: the taps that land on the same source pixel share one weight, their
  sum; offsets no tap lands on (inside the extent) get zeros."""
  t_r, t_c = jnp.asarray(_tap_matrix(pattern_r)), jnp.asarray(_tap_matrix(pattern_c))
  k = jnp.einsum("uj,vl,jlio->uvio", t_r, t_c, kernel.astype(jnp.float32),
                 precision=lax.Precision.HIGHEST)
  return k.astype(kernel.dtype)


def _phase_padding(pattern_r: tuple[int, ...], pattern_c: tuple[int, ...]):
  # Output i of the phase convolution reads source i + min .. i + max, zeros outside.
  return ((-min(pattern_r), max(pattern_r)), (-min(pattern_c), max(pattern_c)))


def _conv(x: jax.Array, kernel: jax.Array, padding, dilation: int,
          precision: lax.PrecisionLike) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, rhs_dilation=(dilation, dilation),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=precision)


def phase_cost(rows: AxisPlan, cols: AxisPlan) -> int:
  """Multiply-adds per (input, output) channel pair of the phase decomposition."""
  return rows.extent * cols.extent * rows.in_size * cols.in_size


def direct_cost(rows: AxisPlan, cols: AxisPlan, kernel_size: int) -> int:
  """Multiply-adds per channel pair of resizing, then convolving at the output size."""
  return kernel_size * kernel_size * rows.phase.shape[0] * cols.phase.shape[0]


def nearest_upsampled_conv(x: jax.Array, kernel: jax.Array, rows: Sequence[int] | np.ndarray,
                           cols: Sequence[int] | np.ndarray, *, dilation: int = 1,
                           precision: lax.PrecisionLike = None,
                           method: str = "auto") -> jax.Array:
  """conv(x[:, rows][:, :, cols], kernel), 'same' zero padding, computed at x's resolution.

  Args:
    x: [B, h, w, I] NHWC source maps.
    kernel: [k, k, I, O] HWIO, k odd.
    rows: [R_h] source row of each output row; cols: [R_w] likewise (static, e.g.
      `segmenter.nearest_indices(h, R)`).
    dilation: kernel dilation (padding dilation * (k - 1) / 2 keeps the size).
    precision: convolution precision.
    method: 'phases', 'direct' (resize, then convolve) or 'auto' (the cheaper one).
  Returns:
    [B, R_h, R_w, O] (no bias).
  """
  k = kernel.shape[0]
  if kernel.shape[1] != k or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f"kernel {kernel.shape} does not fit a square kernel over {x.shape}")
  plan_r = axis_plan(rows, x.shape[1], k, dilation)
  plan_c = axis_plan(cols, x.shape[2], k, dilation)
  pad = dilation * (k - 1) // 2
  if all(np.array_equal(p.anchor, np.arange(p.in_size)) for p in (plan_r, plan_c)):
    return _conv(x, kernel, ((pad, pad), (pad, pad)), dilation, precision)  # no resize
  if method == "auto":
    cheaper = phase_cost(plan_r, plan_c) < direct_cost(plan_r, plan_c, k)
    method = "phases" if cheaper else "direct"
  if method == "direct":
    up = jnp.take(jnp.take(x, plan_r.anchor, axis=1), plan_c.anchor, axis=2)
    return _conv(up, kernel, ((pad, pad), (pad, pad)), dilation, precision)
  if method != "phases":
    raise ValueError(f"method must be 'auto', 'phases' or 'direct', got {method!r}")
  blocks = []
  for pr in plan_r.patterns:
    row_blocks = []
    for pc in plan_c.patterns:
      row_blocks.append(_conv(x, _phase_kernel(kernel, pr, pc), _phase_padding(pr, pc), 1,
                              precision))  # [B, h, w, O]
    blocks.append(jnp.concatenate(row_blocks, axis=2))
  z = jnp.concatenate(blocks, axis=1)  # [B, P_r h, P_c w, O]: phase-major rows and columns
  take_r = plan_r.phase * x.shape[1] + plan_r.anchor
  take_c = plan_c.phase * x.shape[2] + plan_c.anchor
  return jnp.take(jnp.take(z, take_r, axis=1), take_c, axis=2)


def resized_concat_conv(maps: Sequence[jax.Array], margins: Sequence[int], resolution: int,
                        kernel: jax.Array, bias: jax.Array | None,
                        index_fn: Callable[[int, int], np.ndarray], *, dilation: int = 1,
                        precision: lax.PrecisionLike = None,
                        method: str = "auto") -> jax.Array:
  """conv(concat of the cropped, nearest-resized maps, kernel) + bias, without the concat.

  Maps whose cropped sizes agree share index maps; their channels form one group, convolved
  at the group's own resolution (`nearest_upsampled_conv`); the groups' outputs are summed.
  Maps already at the output size are convolved one by one instead: inside a jitted generator +
  segmenter graph, XLA:CPU fuses the generator's last filter of each layer into a channel
  concatenation of them, which then ran slower than separate convolutions (miniworld sweep:
  41 vs 48 ms per image for generator + segmenter; on precomputed maps, 32 vs 30 ms).

  Args:
    maps: list of [B, C_i, h_i, w_i] NCHW, in concatenation order.
    margins: pixels cropped from each side of map i before the resize; () crops nothing.
    resolution: output side.
    kernel: [k, k, sum C_i, O] HWIO.
    bias: [O] or None.
    index_fn: (in_size, out_size) -> [out_size] source indices (the resize rule).
    dilation, precision, method: as `nearest_upsampled_conv`.
  Returns:
    [B, resolution, resolution, O] float32 NHWC.
  """
  margins = tuple(margins) or (0,) * len(maps)
  if len(margins) != len(maps):
    raise ValueError(f"{len(margins)} margins for {len(maps)} feature maps")
  if sum(f.shape[1] for f in maps) != kernel.shape[2]:
    raise ValueError(f"maps have {sum(f.shape[1] for f in maps)} channels, kernel "
                     f"{kernel.shape}")
  groups: dict[tuple[int, int], list[tuple[jax.Array, int]]] = {}
  start = 0
  for i, (f, m) in enumerate(zip(maps, margins)):
    f = f[..., m:f.shape[-2] - m, m:f.shape[-1] - m].astype(jnp.float32)
    resized = f.shape[-2:] != (resolution, resolution)
    key = f.shape[-2:] if resized else (i,) + f.shape[-2:]
    groups.setdefault(key, []).append((f, start))
    start += f.shape[1]
  out = None
  for key, members in groups.items():
    h, w = key[-2:]
    x = jnp.transpose(jnp.concatenate([f for f, _ in members], axis=1), (0, 2, 3, 1))
    k_g = jnp.concatenate([kernel[:, :, s:s + f.shape[1]] for f, s in members], axis=2)
    y = nearest_upsampled_conv(x, k_g, index_fn(h, resolution), index_fn(w, resolution),
                               dilation=dilation, precision=precision, method=method)
    out = y if out is None else out + y
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out

