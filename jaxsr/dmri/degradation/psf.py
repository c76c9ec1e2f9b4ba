"""Acquisition-like degradations: per-axis point-spread functions and decimation, in numpy.

An LR acquisition of an HR field of view is modelled axis by axis as a linear
map from N HR voxels to n = N / s LR voxels (s the axis's factor, any real
>= 1): LR voxel j is centred on the centre of its block of s HR voxels,
at continuous HR index p_j = (j + 1/2) s - 1/2 (the convention of
`jaxsr.dmri.models.sampling`: both grids span the same field of view), and takes a
weighted sum of the HR voxels around p_j. The weights are the PSF's:

  cubic     Keys cubic (a = -0.5) stretched by s: the anti-aliased resize of
            `jaxsr.dmri.degradation.degrade.degrade` (the training degradation of the papers);
  block     the box of one LR voxel: each HR voxel weighted by the length of its
            cell inside the LR cell (block averaging / an ideal thick slice);
  gaussian  a Gaussian of FWHM `fwhm` LR voxels (default 1), integrated over each
            HR cell (a smooth slice profile or an acquisition's blur);
  kspace    the central n samples of the HR spectrum (k-space truncation: a
            smaller matrix on the same field of view, with its Gibbs ringing).

Spatial kernels reflect at the volume's ends (half-sample symmetric); k-space
truncation is periodic, as the Fourier transform is. An axis with s = 1 is left
as it is. Each map is an (n, N) matrix, built once per (psf, N, n, fwhm) and
applied by matrix products, so a patch of a few thousand voxels degrades in
well under a millisecond; the same matrices degrade whole volumes in
evaluation and in `jaxsr upsample --adapt`.

A PSF may be given per axis: one name for all three axes, or a tuple of three
(an MRI acquisition is k-space truncation in-plane and a slice profile
through-plane). `right_inverse` gives, per axis, the map from LR back to HR
that data consistency adds residuals with: the minimum-norm right inverse
(pseudo-inverse) for k-space truncation, so one step makes the output
reproduce the input exactly, and cubic interpolation for the spatial PSFs.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from scipy import special

from jaxsr.errors import JaxsrError

PSFS = ("cubic", "block", "gaussian", "kspace")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


class PSFError(JaxsrError, ValueError):
  """An unknown PSF, or a factor or shape it cannot make; one line."""


def check_psf(psf: str) -> str:
  """`psf` if it is one of `PSFS`; PSFError naming the known ones otherwise."""
  if psf not in PSFS:
    raise PSFError(f"unknown PSF {psf!r}: use one of {', '.join(PSFS)}")
  return psf


def per_axis(psf: str | Sequence[str]) -> tuple[str, str, str]:
  """(x, y, z) PSF names from one name or three (each checked); PSFError otherwise."""
  names = (psf,) * 3 if isinstance(psf, str) else tuple(psf)
  if len(names) != 3:
    raise PSFError(f"give one PSF or three (x, y, z), got {len(names)}: {', '.join(names)}")
  return tuple(check_psf(str(name)) for name in names)


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def cubic_resize_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) float64: Keys cubic (a = −0.5) interpolation of n_in samples onto n_out over
  the same field of view (half-voxel centres), the weights renormalised where taps fall
  outside: `tricubic_upsample` along one axis, as `jax.image.resize` computes it (equal within
  float32 rounding, tested), in numpy: no JAX program to compile per axis length."""
  x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
  weights = _keys_cubic(x[:, None] - np.arange(n_in)[None, :])
  return weights / weights.sum(axis=1, keepdims=True)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
  """Half-sample symmetric reflection of integer indices into [0, n)."""
  period = 2 * n
  index = np.mod(index, period)
  return np.where(index < n, index, period - 1 - index)


def _spatial_matrix(psf: str, n_hr: int, n_lr: int, fwhm: float) -> np.ndarray:
  s = n_hr / n_lr
  centres = (np.arange(n_lr) + 0.5) * s - 0.5  # LR centres in continuous HR index
  if psf == "cubic":
    radius = 2.0 * s
  elif psf == "block":
    radius = 0.5 * s + 0.5
  else:
    sigma = fwhm * s * FWHM_TO_SIGMA
    radius = 4.0 * sigma + 0.5
  offsets = np.arange(-math.ceil(radius) - 1, math.ceil(radius) + 2)
  taps = np.floor(centres)[:, None].astype(int) + offsets[None, :]  # (n, T) HR indices
  d = taps - centres[:, None]  # distance of each HR voxel centre from the LR centre
  if psf == "cubic":
    weights = _keys_cubic(d / s)
  elif psf == "block":  # overlap of [d - 1/2, d + 1/2] with [-s/2, s/2]
    weights = np.clip(np.minimum(d + 0.5, s / 2) - np.maximum(d - 0.5, -s / 2), 0.0, None)
  else:
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    weights = 0.5 * (special.erf((d + 0.5) * scale) - special.erf((d - 0.5) * scale))
  weights = weights / weights.sum(axis=1, keepdims=True)
  matrix = np.zeros((n_lr, n_hr))
  np.add.at(matrix, (np.repeat(np.arange(n_lr), taps.shape[1]), _reflect(taps, n_hr).ravel()),
            weights.ravel())
  return matrix


def _kspace_matrix(n_hr: int, n_lr: int, apodisation: float = 0.0) -> np.ndarray:
  """Truncation to the central n_lr frequencies, sampled at the LR block centres, the kept
  frequencies weighted by a raised-cosine window of strength `apodisation` (0: none; 0.46:
  Hamming, as scanners' k-space filters)."""
  spectrum = np.fft.fft(np.eye(n_hr), axis=0)  # column i: spectrum of the unit impulse at i
  freqs = np.fft.fftfreq(n_hr) * n_hr  # integer frequencies, cycles per field of view
  keep = np.abs(freqs) < n_lr / 2
  nyquist = np.abs(freqs) == n_lr / 2  # an even LR matrix: half of the ±n/2 pair each
  window = (1.0 - apodisation) + apodisation * np.cos(2 * np.pi * freqs / n_lr)
  weight = (keep + 0.5 * nyquist) * window
  # LR sample j sits at HR index p_j = (j + 1/2) s - 1/2: evaluate the truncated Fourier series there.
  s = n_hr / n_lr
  positions = (np.arange(n_lr) + 0.5) * s - 0.5
  basis = np.exp(2j * np.pi * np.outer(positions, freqs) / n_hr) / n_hr  # (n, N)
  return (basis @ (weight[:, None] * spectrum)).real


@functools.lru_cache(maxsize=512)
def axis_matrix(psf: str, n_hr: int, n_lr: int, fwhm: float = 1.0, apodisation: float = 0.0
                ) -> np.ndarray:
  """(n_lr, n_hr) float32 matrix of the degradation along one axis (read-only).

  Args:
    psf: one of `PSFS`.
    n_hr, n_lr: voxels along the axis before and after (n_lr <= n_hr).
    fwhm: the Gaussian's full width at half maximum in LR voxels (other PSFs ignore it).
    apodisation: k-space truncation's window strength in [0, 0.5] (other PSFs ignore it).
  """
  check_psf(psf)
  if not 1 <= n_lr <= n_hr:
    raise PSFError(f"cannot degrade an axis of {n_hr} voxels to {n_lr}")
  if not fwhm > 0:
    raise PSFError(f"the Gaussian's FWHM must be positive, got {fwhm}")
  if n_lr == n_hr:
    matrix = np.eye(n_hr)
  elif psf == "kspace":
    matrix = _kspace_matrix(n_hr, n_lr, float(apodisation))
  else:
    matrix = _spatial_matrix(psf, n_hr, n_lr, float(fwhm))
  matrix = matrix.astype(np.float32)
  matrix.flags.writeable = False
  return matrix


@functools.lru_cache(maxsize=512)
def right_inverse(psf: str, n_hr: int, n_lr: int) -> np.ndarray:
  """(n_hr, n_lr) float32 map from LR residuals back to HR along one axis (read-only).

  k-space truncation: the pseudo-inverse of `axis_matrix` (zero-filling, with an even
  LR matrix's Nyquist term shared so that `axis_matrix @ right_inverse` is the identity:
  data consistency is exact in one step). Spatial PSFs: Keys cubic interpolation (the
  classical back-projection, `cubic_resize_matrix`: `tricubic_upsample` along one axis).
  """
  check_psf(psf)
  if n_lr == n_hr:
    matrix = np.eye(n_hr)
  elif psf == "kspace":
    matrix = np.linalg.pinv(axis_matrix(psf, n_hr, n_lr).astype(np.float64))
  else:
    matrix = cubic_resize_matrix(n_hr, n_lr)
  matrix = matrix.astype(np.float32)
  matrix.flags.writeable = False
  return matrix


def apply_axes(volume: np.ndarray, matrices: Sequence[np.ndarray | None]) -> np.ndarray:
  """(..., X, Y, Z) with axis a mapped by matrices[a] (rows: new voxels; None: unchanged)."""
  out = np.asarray(volume, np.float32)
  for axis, matrix in enumerate(matrices):
    if matrix is None:
      continue
    position = out.ndim - 3 + axis
    out = np.moveaxis(np.tensordot(out, matrix, axes=([position], [1])), -1, position)
  return np.ascontiguousarray(out, dtype=np.float32)


def degrade(volume: np.ndarray, lr_shape: Sequence[int], psf: str | Sequence[str],
            fwhm: float = 1.0, apodisation: float = 0.0) -> np.ndarray:
  """Degrades the last three axes of (..., X, Y, Z) to `lr_shape` by `psf`: one name for every
  axis, or three (x, y, z).

  Returns float32 (..., x, y, z). Axes whose size does not change are untouched.
  """
  volume = np.asarray(volume, np.float32)
  if volume.ndim < 3 or len(lr_shape) != 3:
    raise PSFError(f"need (..., X, Y, Z) volumes and a 3-axis LR shape, got {volume.shape}, "
                   f"{tuple(lr_shape)}")
  names = per_axis(psf)
  hr_shape = volume.shape[-3:]
  return apply_axes(volume, [None if int(n) == h
                             else axis_matrix(p, h, int(n), float(fwhm), float(apodisation))
                             for p, h, n in zip(names, hr_shape, lr_shape)])


def upsample_residual(residual: np.ndarray, hr_shape: Sequence[int], psf: str | Sequence[str]
                      ) -> np.ndarray:
  """(..., x, y, z) LR residuals onto the (X, Y, Z) HR grid by each axis's `right_inverse`."""
  names = per_axis(psf)
  lr_shape = residual.shape[-3:]
  return apply_axes(residual, [None if int(h) == n else right_inverse(p, int(h), n)
                               for p, h, n in zip(names, hr_shape, lr_shape)])
