"""k-space truncation (the MRSI resolution model), zero-filling and data consistency.

Maps are real (..., N, N) arrays on the high-resolution grid. Their 2D spectrum
(`jnp.fft.fft2`) has integer frequencies f in [-N/2, N/2) per axis; an
acquisition of n × n samples (n even) measures -n/2 <= f < n/2. Of these, the
map keeps |f| < n/2: the -n/2 row and column have no measured +n/2 partner, so
a real map cannot hold them alone, and dropping them makes truncation a
projection (truncating twice changes nothing) and data consistency exact. The
low-resolution map is that spectrum zero-filled back to N × N and transformed
back, which is also the k-space zero-filling baseline. `n` may be a traced
array, one value per map, so batches can mix resolutions.

`zero_fill` interpolates an acquired low-resolution array onto a finer grid the
same way (numpy, any number of axes): a dMRI volume onto an HR grid of the
voxel-centre convention, or an MRSI map onto the network's grid of the FFT's
geometry.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


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


def zero_fill(lr: np.ndarray, shape: Sequence[int], *, voxel_centres: bool = True) -> np.ndarray:
  """Fourier (k-space zero-filling) interpolation of `lr` onto `shape`; float32, intensities kept.

  Per axis whose size changes, the spectrum is zero-padded to the new size
  (`scipy.signal.resample`). With `voxel_centres` (the grids of
  `jaxsr.dmri.models.sampling`), a linear phase first shifts the signal by
  δ = (n/N − 1)/2 samples so output sample j lands at input ((j + ½)·n/N − ½), and
  the Nyquist bin of an even axis is split between ±n/2: band-limited periodic
  content is reproduced exactly. Without it, sample 0 of both grids coincides
  (the FFT's geometry of an MRSI reconstruction) and only |f| < n/2 is kept, the
  acquisition model of `truncate`.
  """
  import scipy.signal  # on use: it slows every command's start-up

  out = np.asarray(lr, np.float64)
  if out.ndim != len(shape):
    raise ValueError(f"a {out.ndim}-D array cannot be resized to {tuple(shape)}")
  for axis, size in enumerate(shape):
    n = out.shape[axis]
    if n == size:
      continue
    along = [1] * out.ndim
    along[axis] = n
    spectrum = np.fft.fft(out, axis=axis)
    if voxel_centres:
      delta = 0.5 * n / size - 0.5
      spectrum = spectrum * np.exp(2j * np.pi * np.fft.fftfreq(n) * delta).reshape(along)
    elif n % 2 == 0:
      spectrum = spectrum * (np.arange(n) != n // 2).reshape(along)
    out = scipy.signal.resample(np.fft.ifft(spectrum, axis=axis).real, int(size), axis=axis)
  return out.astype(np.float32)
