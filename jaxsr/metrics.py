"""Evaluation metrics (numpy / scipy, float64): PSNR, SSIM and sharpness, optionally masked."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# SSIM's constants (Wang et al. 2004), shared with the MS-SSIM training loss: K1, K2 and the
# Gaussian window's truncation in standard deviations.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_TRUNCATE = 3.5


def _prepare(pred, target, mask, data_range):
  """float64 pred, target, a voxel selection (the bool mask, or `...` if None) and the data range."""
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  if pred.shape != target.shape:
    raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
  if mask is None:
    select = ...
  else:
    select = np.asarray(mask, bool)
    if select.shape != target.shape:
      raise ValueError(f"mask shape {select.shape} differs from the image shape {target.shape}")
    if not select.any():
      raise ValueError("mask selects no voxels")
  if data_range is None:
    data_range = target[select].max() - target[select].min()
  return pred, target, select, float(data_range)


def psnr(pred, target, mask=None, data_range=None) -> float:
  """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB, MSE over the mask voxels.

  data_range defaults to target.max() - target.min() over the mask. Returns inf
  when pred equals target on the mask.
  """
  pred, target, select, data_range = _prepare(pred, target, mask, data_range)
  mse = np.mean((pred[select] - target[select]) ** 2)
  if mse == 0:
    return float("inf")
  return float(10 * np.log10(data_range**2 / mse))


def ssim(pred, target, mask=None, data_range=None, sigma: float = 1.5) -> float:
  """Structural similarity with a Gaussian window (Wang et al. 2004), any dimensionality.

  Local statistics use a Gaussian window of std `sigma` voxels truncated at 3.5
  sigma (scipy `gaussian_filter`, 'reflect' borders), K1 = 0.01, K2 = 0.03 and
  population covariances: the definition of `skimage.metrics.structural_similarity(
  gaussian_weights=True, sigma=sigma, use_sample_covariance=False)`. The SSIM
  map is averaged over the mask voxels; without a mask, over the whole volume
  minus a border of the window radius, exactly as skimage. data_range defaults
  to target.max() - target.min() over the mask.
  """
  pred, target, select, data_range = _prepare(pred, target, mask, data_range)
  radius = int(SSIM_TRUNCATE * sigma + 0.5)
  if mask is None and min(pred.shape) <= 2 * radius:
    raise ValueError(f"unmasked SSIM crops a {radius}-voxel border: every side must exceed "
                     f"{2 * radius} voxels, got shape {pred.shape}")

  def blur(x):
    return ndimage.gaussian_filter(x, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

  mu_x, mu_y = blur(pred), blur(target)
  var_x = blur(pred * pred) - mu_x * mu_x
  var_y = blur(target * target) - mu_y * mu_y
  cov_xy = blur(pred * target) - mu_x * mu_y
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
              / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
  if mask is None:
    select = tuple(slice(radius, n - radius) for n in ssim_map.shape)
  return float(ssim_map[select].mean())


def gradient_sharpness(pred, target, mask) -> float:
  """Mean gradient magnitude of `pred` over that of `target`, inside the eroded mask (2D or 3D).

  Central differences (`np.gradient`, per voxel); the mask is eroded by one voxel so
  that the edges of masked-out regions do not count. 1 means edges as steep as the
  truth's, below 1 blurrier, above 1 sharper (or noisier).
  """
  pred, target, select, _ = _prepare(pred, target, mask, 1.0)
  inner = ndimage.binary_erosion(select) if mask is not None else select
  if mask is not None and not inner.any():
    raise ValueError("the mask has no interior voxel")

  def magnitude(image):
    return np.sqrt(sum(g ** 2 for g in np.gradient(image)))[inner].mean()

  return float(magnitude(pred) / magnitude(target))


def high_frequency_ratio(pred, target, n: int) -> float:
  """Spectral energy of `pred` at frequencies not acquired by an n × n matrix, over the truth's.

  pred, target: (N, N) images (masked alike). Frequencies f (integers of the 2D DFT)
  with max(|f_x|, |f_y|) >= n/2 are the ones a super-resolution network has to
  supply (the others are measured, see `jaxsr.kspace`); 1 means as much
  detail there as the truth, 0 none (zero-filling).
  """
  pred, target, _, _ = _prepare(pred, target, None, 1.0)
  f = np.abs(np.fft.fftfreq(pred.shape[-1]) * pred.shape[-1])
  outside = (f[:, None] >= n / 2) | (f[None, :] >= n / 2)
  energy = lambda image: np.sum(np.abs(np.fft.fft2(image))[outside] ** 2)
  return float(energy(pred) / energy(target))
