"""The MRSI training loss: (1 - alpha) L1 + alpha (1 - MS-SSIM) inside the quality mask."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxsr.metrics import SSIM_K1, SSIM_K2, SSIM_TRUNCATE

# Multi-scale SSIM (Wang, Simoncelli & Bovik, Asilomar 2003): the per-scale exponents
# they fitted to human judgements, a Gaussian window of sigma 1.5 (11 taps with SSIM's
# truncation) and SSIM's K1, K2 (`jaxsr.metrics`), and 2 x 2 average pooling between scales.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_SIGMA = 1.5


def _gaussian_blur_2d(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian filter over the last two axes, mirrored borders (scipy's 'reflect').

  Two 1D convolutions (`lax.conv_general_dilated`) on the images as one batch.
  """
  radius = int(SSIM_TRUNCATE * sigma + 0.5)
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(images.dtype)
  h, w = images.shape[-2:]
  flat = jnp.pad(images.reshape(-1, h, w), ((0, 0), (radius, radius), (radius, radius)),
                 mode="symmetric")[..., None]
  for kernel in (taps.reshape(-1, 1, 1, 1), taps.reshape(1, -1, 1, 1)):
    flat = jax.lax.conv_general_dilated(flat, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return flat[..., 0].reshape(images.shape)


def _average_pool_2x2(images: jax.Array) -> jax.Array:
  """(..., H, W) -> (..., H // 2, W // 2) means of 2 x 2 blocks (an odd last row/column is dropped)."""
  h, w = images.shape[-2] // 2 * 2, images.shape[-1] // 2 * 2
  a = images[..., :h, :w]
  return 0.25 * (a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2])


def _ssim_terms(x: jax.Array, y: jax.Array, data_range: float) -> tuple[jax.Array, jax.Array]:
  """Per-pixel luminance and contrast-structure maps (..., H, W) of SSIM."""
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  blur = lambda a: _gaussian_blur_2d(a, SSIM_SIGMA)
  mu_x, mu_y = blur(x), blur(y)
  var_x = blur(x * x) - mu_x ** 2
  var_y = blur(y * y) - mu_y ** 2
  cov = blur(x * y) - mu_x * mu_y
  luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
  contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
  return luminance, contrast_structure


def ms_ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0,
            weights: Sequence[float] = MS_SSIM_WEIGHTS) -> jax.Array:
  """Multi-scale SSIM of (..., H, W) images, one value per leading index (float32).

  MS-SSIM = mean(l_M cs_M)^w_M · prod_{j<M} mean(cs_j)^w_j over M = len(weights)
  scales, each half the size of the previous (2 x 2 average pooling), with
  mirrored borders so that small maps (64 x 64 has 4 x 4 at the fifth scale)
  need no cropping. One scale with weight 1 is plain SSIM averaged over the
  whole image. Contrast terms are clipped at 0 before the fractional powers,
  as common implementations do, so the value is real.
  """
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  result = 1.0
  for scale, weight in enumerate(weights):
    luminance, contrast_structure = _ssim_terms(x, y, data_range)
    if scale == len(weights) - 1:
      value = jnp.mean(luminance * contrast_structure, axis=(-2, -1))
    else:
      value = jnp.mean(contrast_structure, axis=(-2, -1))
      x, y = _average_pool_2x2(x), _average_pool_2x2(y)
    result = result * jnp.maximum(value, 0.0) ** weight
  return result


def mrsi_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, alpha: float = 0.84,
              data_range: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(1 - alpha) L1 + alpha (1 - MS-SSIM) of (B, H, W) maps inside the quality mask.

  L1 is the mean over the mask's pixels; MS-SSIM compares the maps with the
  rejected pixels set to 0 in both. Returns (loss, {"l1", "ms_ssim"}).
  """
  mask = mask.astype(jnp.float32)
  l1 = jnp.sum(jnp.abs(pred - target) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  with jax.named_scope("ms_ssim"):  # names its ops in profiles (benchmarks.profile_step)
    similarity = jnp.mean(ms_ssim(pred * mask, target * mask, data_range))
  return (1 - alpha) * l1 + alpha * (1 - similarity), {"l1": l1, "ms_ssim": similarity}
