"""3D Residual Dense Network encoder (Zhang et al., CVPR 2018), without upsampling.

The ArSSR / CSR-dMRI latent feature extractor: every 2D convolution of RDN
becomes a 3D one and the upsampling tail is replaced by a 3^3 convolution to
`out_features` channels, so the output keeps the input's spatial size.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from jaxsr.dmri.models.conv import Conv3D


def conv3d(features: int, kernel: int, dtype: Dtype, name: str | None = None,
           impl: str = "auto") -> Conv3D:
  """A 'SAME'-padded (zero) kernel^3 convolution computing in `dtype`, float32 params."""
  return Conv3D(features, kernel, dtype, impl, name=name)


class ResidualDenseBlock(nn.Module):
  """RDB: `num_layers` densely connected 3^3 conv + ReLU layers, 1^3 fusion, local residual.

  Input and output are (B, X, Y, Z, F) with F = the input's channel count (G0).
  Layer c sees the concatenation of the block input and the outputs of layers
  0 .. c-1 (G0 + c * growth channels) and adds `growth` channels.
  """
  growth: int
  num_layers: int
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = [x]
    for c in range(self.num_layers):  # named as nn.Conv auto-named them: older checkpoints load
      h = jnp.concatenate(features, axis=-1)
      features.append(nn.relu(conv3d(self.growth, 3, self.dtype, name=f"Conv_{c}",
                                     impl=self.conv_impl)(h)))
    fused = conv3d(x.shape[-1], 1, self.dtype, name="local_fusion", impl=self.conv_impl)(
        jnp.concatenate(features, axis=-1))
    return x + fused


class RDN3D(nn.Module):
  """Residual Dense Network on 3D volumes, same spatial size in and out.

  (B, X, Y, Z, C_in) -> (B, X, Y, Z, out_features). Structure:
    SFE1 3^3 conv -> G0, SFE2 3^3 conv -> G0;
    `num_blocks` (D) residual dense blocks of `num_layers` (C) layers, growth G;
    global feature fusion: concat the D block outputs -> 1^3 conv -> G0 -> 3^3 conv -> G0;
    global residual with SFE1's output; final 3^3 conv -> out_features.

  Attributes:
    num_features: G0, channels between blocks.
    growth: G, channels added by each layer inside a block.
    num_blocks: D, number of residual dense blocks.
    num_layers: C, conv layers per block.
    out_features: channels of the output feature map.
    dtype: computation dtype (parameters stay float32).
    conv_impl: 3D convolution implementation (`jaxsr.dmri.models.conv.CONV_IMPLS`).
  """
  num_features: int = 64
  growth: int = 64
  num_blocks: int = 8
  num_layers: int = 3
  out_features: int = 128
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @property
  def receptive_radius(self) -> int:
    """Voxels of context on each side that an output voxel depends on (one per 3^3 conv).

    SFE1, SFE2, the D * C block convs, GFF's 3^3 conv and the output conv; with
    zero 'SAME' padding, a tile widened by this many voxels (or reaching the
    volume's border) gives the same output as the whole volume in its core.
    """
    return 4 + self.num_blocks * self.num_layers

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(conv3d, dtype=self.dtype, impl=self.conv_impl)
    sfe1 = conv(self.num_features, 3, name="sfe1")(x)
    h = conv(self.num_features, 3, name="sfe2")(sfe1)
    block_outputs = []
    for i in range(self.num_blocks):
      h = ResidualDenseBlock(self.growth, self.num_layers, self.dtype, self.conv_impl,
                             name=f"rdb_{i}")(h)
      block_outputs.append(h)
    h = conv(self.num_features, 1, name="gff_1x1")(jnp.concatenate(block_outputs, axis=-1))
    h = conv(self.num_features, 3, name="gff_3x3")(h)
    return conv(self.out_features, 3, name="output")(h + sfe1)
