"""Resolution degradation, classical interpolation and back-projection on a shared field of view.

A volume of N voxels along an axis spans the field of view [-1, 1] (see
`jaxsr.dmri.models.sampling`), so an LR grid of n voxels and an HR grid of N voxels
cover the same physical extent: the effective scale along that axis is N / n.
Both directions use `jax.image.resize` with the Keys cubic kernel (a = -0.5);
downsampling is anti-aliased (the kernel is stretched by the scale), which is
the "bicubic" degradation of the CSR-dMRI paper.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from jaxsr.dmri.degradation import psf as psf_lib


def lr_shape_for_scale(hr_shape: Sequence[int], scale: float | Sequence[float]) -> tuple[int, ...]:
  """LR grid for an HR grid degraded by `scale`: round(N / s) voxels per axis (at least 1)."""
  scales = [float(scale)] * len(hr_shape) if np.ndim(scale) == 0 else [float(s) for s in scale]
  if len(scales) != len(hr_shape):
    raise ValueError(f"scale {scale} does not match a {len(hr_shape)}-D grid")
  if any(s <= 0 for s in scales):
    raise ValueError(f"scale must be positive, got {scale}")
  return tuple(max(1, int(round(n / s))) for n, s in zip(hr_shape, scales))


def resize_spatial(volumes: jax.Array, shape: Sequence[int], antialias: bool = True) -> jax.Array:
  """Cubic resize of the three spatial axes of `volumes` (..., X, Y, Z) to `shape`.

  Leading axes (batch, channels) are kept. Downsampling is anti-aliased when
  `antialias`; upsampling is plain tricubic (Keys) interpolation.
  """
  shape = tuple(int(s) for s in shape)
  full_shape = volumes.shape[:-3] + shape
  return jax.image.resize(volumes, full_shape, method="cubic", antialias=antialias)


def degrade(volumes: jax.Array, lr_shape: Sequence[int]) -> jax.Array:
  """Anti-aliased cubic downsampling of (..., X, Y, Z) HR volumes to an LR grid."""
  return resize_spatial(volumes, lr_shape, antialias=True)


def tricubic_upsample(lr: jax.Array, hr_shape: Sequence[int]) -> jax.Array:
  """Tricubic interpolation of (..., x, y, z) LR volumes onto an HR grid of the same field of view."""
  return resize_spatial(lr, hr_shape, antialias=False)


def back_project(hr: np.ndarray, lr: np.ndarray, iterations: int,
                 psf: str | Sequence[str] | None = None) -> np.ndarray:
  """Data consistency by back-projection: corrects an (X, Y, Z) HR estimate towards `lr`.

  Each iteration adds the residual lr − D(hr) mapped back to the HR grid
  (Irani & Peleg's back-projection), so degrading the result reproduces the
  measured (x, y, z) LR volume ever more closely while the detail the estimate
  adds above the LR band is kept. D is this module's `degrade` (anti-aliased
  cubic, the training degradation) when `psf` is None, else
  `jaxsr.dmri.degradation.psf.degrade` with `psf` (one name, or one per axis). Residuals
  go back by tricubic interpolation, except along k-space-truncated axes, where
  they go back by the pseudo-inverse of the truncation (`psf.right_inverse`):
  there the first iteration already replaces the estimate's measured k-space
  centre by the input's exactly (the data consistency of the MRSI method),
  and the frequencies above it stay the estimate's.
  Returns float32 (X, Y, Z); `iterations` = 0 returns `hr` unchanged.
  """
  if psf is None:
    out = jax.numpy.asarray(hr, jax.numpy.float32)
    lr = jax.numpy.asarray(lr, jax.numpy.float32)
    for _ in range(iterations):
      out = out + tricubic_upsample(lr - degrade(out, lr.shape), out.shape)
    return np.asarray(out)
  out = np.asarray(hr, np.float32)
  lr = np.asarray(lr, np.float32)
  for _ in range(iterations):
    out = out + psf_lib.upsample_residual(lr - psf_lib.degrade(out, lr.shape, psf), out.shape,
                                          psf)
  return out
