"""Fixed-scale 3D super-resolution baselines: DCSRN and ResCNN3D.

Both take the LR volume already interpolated onto the HR grid, (B, X, Y, Z, 1),
and return the HR estimate on the same grid, (B, X, Y, Z, 1):

* DCSRN (Chen et al., ISBI 2018, "Brain MRI super resolution using 3D deep
  densely connected neural networks"): one densely connected block of
  BN -> ELU -> 3^3 conv units between an input and an output 3^3 conv.
* ResCNN3D (Du et al., Neurocomputing 2020): a plain stack of 3^3 conv + ReLU
  layers predicting a residual that is added to the input.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from jaxsr.dmri.models.rdn import conv3d


class DCSRN(nn.Module):
  """Densely connected SR network: (B, X, Y, Z, 1) -> float32 (B, X, Y, Z, 1).

  Structure:
    input 3^3 conv -> 2k channels;
    `num_units` units, unit i: BN -> ELU -> 3^3 conv -> k channels, whose input is
    the concatenation of the input conv's output and units 0 .. i-1's outputs
    (2k + i * k channels);
    output 3^3 conv -> 1 channel on the concatenation of all of them
    (2k + num_units * k channels).

  BatchNorm normalises over batch and space with batch statistics when
  `train` (updating the mutable 'batch_stats' collection) and with the running
  averages otherwise.

  Attributes:
    growth: k, channels added by each unit.
    num_units: units in the densely connected block.
    dtype: computation dtype (parameters stay float32; outputs are float32).
    conv_impl: 3D convolution implementation (`jaxsr.dmri.models.conv.CONV_IMPLS`).
  """
  growth: int = 24
  num_units: int = 4
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @property
  def receptive_radius(self) -> int:
    """Voxels of context on each side that an output voxel depends on (one per 3^3 conv)."""
    return self.num_units + 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(conv3d, kernel=3, dtype=self.dtype, impl=self.conv_impl)
    features = [conv(2 * self.growth, name="input")(x)]
    for i in range(self.num_units):
      h = jnp.concatenate(features, axis=-1)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                       name=f"bn_{i}")(h)
      features.append(conv(self.growth, name=f"unit_{i}")(nn.elu(h)))
    out = conv(1, name="output")(jnp.concatenate(features, axis=-1))
    return out.astype(jnp.float32)


class ResCNN3D(nn.Module):
  """Residual CNN: (B, X, Y, Z, 1) -> float32 (B, X, Y, Z, 1), output = input + residual.

  Structure: `num_layers` 3^3 convs, conv_0: 1 -> F + ReLU, conv_1 .. conv_{n-2}:
  F -> F + ReLU, and a linear `output` conv F -> 1 giving the residual.

  `train` is accepted so that all fixed-scale models share the `(x, train)`
  signature; this model has no batch statistics.

  Attributes:
    num_features: F, channels of the hidden layers.
    num_layers: total conv layers, including the first and the output conv (>= 2).
    dtype: computation dtype (parameters stay float32; outputs are float32).
    conv_impl: 3D convolution implementation (`jaxsr.dmri.models.conv.CONV_IMPLS`).
  """
  num_features: int = 64
  num_layers: int = 10
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @property
  def receptive_radius(self) -> int:
    """Voxels of context on each side that an output voxel depends on (one per 3^3 conv)."""
    return self.num_layers

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    if self.num_layers < 2:
      raise ValueError(f"ResCNN3D needs num_layers >= 2, got {self.num_layers}")
    conv = functools.partial(conv3d, kernel=3, dtype=self.dtype, impl=self.conv_impl)
    h = x
    for i in range(self.num_layers - 1):
      h = nn.relu(conv(self.num_features, name=f"conv_{i}")(h))
    residual = conv(1, name="output")(h)
    return x.astype(jnp.float32) + residual.astype(jnp.float32)
