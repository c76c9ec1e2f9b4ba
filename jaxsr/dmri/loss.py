"""The CSR-dMRI training loss: L1 + fft_weight · mean |FFT(pred) − FFT(target)|."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error over all elements."""
  return jnp.mean(jnp.abs(pred - target))


def fft_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean complex modulus |fftn(pred) - fftn(target)| over batch and frequencies (paper Eq. 3).

  pred, target: (B, X, Y, Z) real volumes; the FFT is over the three spatial
  axes with the unnormalised ("backward") forward transform, as in torch's
  default. By linearity, fftn(pred) - fftn(target) = fftn(pred - target), so one
  transform is taken. Computed in float32 / complex64.
  """
  diff = (pred - target).astype(jnp.float32)
  return jnp.mean(jnp.abs(jnp.fft.fftn(diff, axes=(-3, -2, -1))))


def csr_dmri_loss(pred: jax.Array, target: jax.Array,
                  fft_weight: float = 0.01) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L1 + fft_weight * fft_loss (paper Eq. 4, lambda_k = 0.01) for (B, X, Y, Z) volumes.

  Returns (loss, {"l1": l1 term, "fft": unweighted fft term}).
  """
  l1 = l1_loss(pred, target)
  fft = fft_loss(pred, target)
  return l1 + fft_weight * fft, {"l1": l1, "fft": fft}


