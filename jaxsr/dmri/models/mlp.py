"""The implicit function network F_theta: a ReLU MLP with a NeRF-style input skip."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype


class ImplicitMLP(nn.Module):
  """(..., D) -> (..., 1): `depth` Dense(width) + ReLU layers and a linear Dense(1) head.

  The network input is concatenated onto the activation after the
  `skip_after`-th ReLU (the paper's "residual connection between the input
  and the output of the fourth ReLU"), so layer `skip_after + 1` sees
  width + D features.

  Attributes:
    depth: number of hidden Dense + ReLU layers.
    width: hidden units per layer.
    skip_after: the input is re-injected after this many ReLUs (0 < skip_after < depth).
    dtype: computation dtype (parameters stay float32).
  """
  depth: int = 8
  width: int = 256
  skip_after: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not 0 < self.skip_after < self.depth:
      raise ValueError(f"ImplicitMLP needs 0 < skip_after < depth, got "
                       f"skip_after={self.skip_after}, depth={self.depth}")
    h = x
    for i in range(self.depth):
      h = nn.relu(nn.Dense(self.width, dtype=self.dtype, name=f"hidden_{i}")(h))
      if i + 1 == self.skip_after:
        h = jnp.concatenate([h, x.astype(h.dtype)], axis=-1)
    return nn.Dense(1, dtype=self.dtype, name="head")(h)
