"""The WGAN critic of the MRSI network: 4 strided convolutions, then fully connected layers."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Critic(nn.Module):
  """(B, H, W, C) images -> (B,) Wasserstein critic scores (unbounded).

  C is (T1, FLAIR, zero-filled LR map, real or super-resolved map). Each of the
  `channels` levels is a 3 × 3 convolution with stride 2 and LeakyReLU(0.2); no
  normalisation, as the gradient penalty is taken per sample. Then Dense(`hidden`)
  + LeakyReLU and Dense(1).
  """
  channels: Sequence[int] = (16, 32, 64, 128)
  hidden: int = 64

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    h = images
    for i, features in enumerate(self.channels):
      h = nn.leaky_relu(nn.Conv(features, (3, 3), strides=(2, 2), name=f"conv_{i}")(h), 0.2)
    h = h.reshape(h.shape[0], -1)
    h = nn.leaky_relu(nn.Dense(self.hidden, name="fc_0")(h), 0.2)
    return nn.Dense(1, name="fc_1")(h)[:, 0].astype(jnp.float32)
