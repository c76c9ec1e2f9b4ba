"""k-space truncation (the MRSI resolution model), zero-filling and data consistency, in JAX.

Maps are real (..., N, N) arrays on the high-resolution grid. Their 2D spectrum
(`jnp.fft.fft2`) has integer frequencies f in [-N/2, N/2) per axis; an
acquisition of n × n samples (n even) measures -n/2 <= f < n/2. Of these, the
map keeps |f| < n/2: the -n/2 row and column have no measured +n/2 partner, so
a real map cannot hold them alone, and dropping them makes truncation a
projection (truncating twice changes nothing) and data consistency exact. The
low-resolution map is that spectrum zero-filled back to N × N and transformed
back, which is also the k-space zero-filling baseline. `n` may be a traced
array, one value per map, so batches can mix resolutions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def central_mask(size: int, n: jax.Array | int) -> jax.Array:
  """(..., size, size) bool: the frequencies |f| < n/2 kept of an n × n acquisition (n: (...,) or scalar)."""
  f = jnp.abs(jnp.fft.fftfreq(size) * size)  # integer frequencies in fft2 order
  half = jnp.asarray(n)[..., None, None] / 2
  return (f[:, None] < half) & (f[None, :] < half)


def truncate(maps: jax.Array, n: jax.Array | int) -> jax.Array:
  """(..., N, N) maps -> the same grid holding only their central n × n k-space (zero-filled)."""
  spectrum = jnp.fft.fft2(maps.astype(jnp.float32))
  kept = jnp.where(central_mask(maps.shape[-1], n), spectrum, 0)
  return jnp.fft.ifft2(kept).real


def data_consistency(output: jax.Array, measured: jax.Array, n: jax.Array | int) -> jax.Array:
  """`output` (..., N, N) with its central n × n k-space replaced by that of `measured`.

  `measured` is the zero-filled low-resolution map (`truncate`), so the result
  agrees exactly with the acquisition where it was sampled and keeps the
  network's prediction at the frequencies it was not.
  """
  mask = central_mask(output.shape[-1], n)
  spectrum = jnp.where(mask, jnp.fft.fft2(measured.astype(jnp.float32)),
                       jnp.fft.fft2(output.astype(jnp.float32)))
  return jnp.fft.ifft2(spectrum).real
