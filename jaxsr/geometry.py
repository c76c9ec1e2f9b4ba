"""Output grids of a super-resolution: voxel counts and voxel-to-world affines.

An input grid of n voxels per axis and an output grid of N voxels cover the
same field of view (the training convention of `jaxsr.dmri.models.sampling`: both
span [-1, 1]), so output voxel j's centre lies at the continuous input voxel
index

    i = (j + 1/2) · n / N − 1/2,

and the output affine is the input affine composed with that map: the voxel
axes are scaled by n / N and the origin moves to the first output voxel's
centre, half an output voxel inside the input's outer face. Oblique and
flipped affines keep their rotation, so b-vectors stay valid. Voxel sizes are
in mm, affines map voxel indices to world mm (nibabel's convention).
"""

from __future__ import annotations

from typing import Sequence

import nibabel as nib
import nibabel.affines
import numpy as np


def _per_axis(value: float | Sequence[float], name: str) -> np.ndarray:
  """A positive finite scalar or 3-sequence as a (3,) float64 array; ValueError otherwise."""
  values = np.atleast_1d(np.asarray(value, dtype=np.float64))
  if values.ndim != 1 or values.size not in (1, 3):
    raise ValueError(f"{name} must be one number or three (x, y, z), got {value!r}")
  if not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError(f"{name} must be positive and finite, got {value!r}")
  return np.broadcast_to(values, (3,)).copy()


def output_shape(shape: Sequence[int], affine: np.ndarray, *,
                 voxel_size: float | Sequence[float] | None = None,
                 scale: float | Sequence[float] | None = None,
                 out_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
  """Voxels per axis of the output grid over the field of view of an input grid.

  Exactly one of:
    voxel_size: output voxel edge(s) in mm: round(n · input voxel / voxel_size) voxels;
    scale: upsampling factor(s): round(n · scale) voxels;
    out_shape: the voxel counts themselves.
  One number applies to all three axes. Rounding keeps the field of view, so the
  output voxel is n · input voxel / N, within half an output voxel's share of
  what was asked.

  Raises:
    ValueError: not exactly one of them, a non-positive or non-finite value, or
      an axis that would have fewer voxels than the input (jaxsr only upsamples).
  """
  given = [v is not None for v in (voxel_size, scale, out_shape)]
  if sum(given) != 1:
    raise ValueError("give exactly one of voxel_size, scale and shape")
  shape = np.asarray(shape[:3], dtype=np.int64)
  if voxel_size is not None:
    counts = shape * nib.affines.voxel_sizes(affine)[:3] / _per_axis(voxel_size, "voxel size")
  elif scale is not None:
    counts = shape * _per_axis(scale, "scale")
  else:
    counts = _per_axis(out_shape, "output shape")
    if np.any(counts != np.round(counts)):
      raise ValueError(f"output shape must be whole voxel counts, got {out_shape!r}")
  result = np.maximum(np.round(counts), 1).astype(np.int64)
  if np.any(result < shape):
    raise ValueError(f"the output grid {tuple(int(n) for n in result)} would have fewer voxels "
                     f"than the input {tuple(int(n) for n in shape)} on some axis; jaxsr "
                     "upsamples (use a smaller voxel size or a scale >= 1)")
  return tuple(int(n) for n in result)


def output_to_input_index(in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
  """(4, 4) map from output voxel indices to continuous input voxel indices (same field of view)."""
  ratio = np.asarray(in_shape[:3], np.float64) / np.asarray(out_shape[:3], np.float64)
  return nib.affines.from_matvec(np.diag(ratio), 0.5 * ratio - 0.5)


def output_affine(affine: np.ndarray, in_shape: Sequence[int],
                  out_shape: Sequence[int]) -> np.ndarray:
  """(4, 4) voxel -> world mm affine of the output grid of `out_shape` voxels."""
  return np.asarray(affine, np.float64) @ output_to_input_index(in_shape, out_shape)


def voxel_centres_world(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """(X, Y, Z, 3) world coordinates (mm) of every voxel centre of a grid."""
  index = np.stack(np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij"), axis=-1)
  return nib.affines.apply_affine(affine, index)


def nearest_on_output(volume: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
  """Nearest-neighbour copy of an input-grid (X, Y, Z) array onto the output grid (e.g. a mask)."""
  index = [np.clip(np.floor((np.arange(m) + 0.5) * n / m).astype(np.int64), 0, n - 1)
           for n, m in zip(volume.shape[:3], out_shape)]
  return volume[np.ix_(*index)]
