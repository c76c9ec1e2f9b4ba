"""CSR-dMRI: RDN latent encoder + implicit MLP decoder queried at continuous coordinates.

The LR input (DWI and, optionally, T1 as channels) is encoded once into a latent
map at LR resolution; the intensity at any coordinate c in [-1, 1]^3 (see
`jaxsr.dmri.models.sampling` for the convention) is MLP([c, trilinear(latent, c)]),
or, with `predict_residual`, that plus the trilinear interpolation of the LR DWI
at c.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from jaxsr.dmri.models.mlp import ImplicitMLP
from jaxsr.dmri.models.rdn import RDN3D
from jaxsr.dmri.models.sampling import (grid_coordinates, local_offsets, sample_trilinear_batched,
                                        sample_trilinear_grid)

COORDINATE_INPUTS = ("local", "periodic", "global")

class CSRdMRI(nn.Module):
  """Arbitrary-scale SR model: `encode` (B, x, y, z, C_in) LR volumes, `decode` at (B, Q, 3) coordinates.

  Attributes:
    num_features, growth, num_blocks, num_layers: RDN3D G0, G, D, C.
    latent_features: channels of the latent map (RDN output).
    mlp_depth, mlp_width, mlp_skip_after, mlp_chunk_rows: ImplicitMLP depth, width,
      skip_after, chunk_rows.
    coordinates: what the MLP gets beside the features: "global", the query
      coordinate c in [-1, 1] of the LR input's field of view (the paper's
      wording), or "local", c relative to the nearest LR voxel centre
      (`sampling.local_offsets`), which means the same on a training patch and
      on a whole volume; or "periodic", (sin, cos) of pi times that offset per
      axis (6 inputs): the same information, but continuous across the faces
      between LR voxels, where the local offset jumps from +1 to -1.
    predict_residual: the MLP predicts the difference between the intensity and
      the trilinear interpolation of the LR DWI (input channel 0) at c, a global
      residual as in ResCNN3D (not in the CSR-dMRI paper, whose MLP predicts the
      intensity). The latent map then carries the LR DWI as its last channel
      (latent_features + 1 channels), so the MLP also sees the interpolated value
      and tiled encoding and chunked decoding need nothing else.
    dtype: computation dtype (parameters stay float32; outputs are float32).
    conv_impl: the encoder's 3D convolution implementation (`jaxsr.dmri.models.conv.CONV_IMPLS`).
  """
  num_features: int = 64
  growth: int = 64
  num_blocks: int = 8
  num_layers: int = 3
  latent_features: int = 128
  mlp_depth: int = 8
  mlp_width: int = 256
  mlp_skip_after: int = 4
  mlp_chunk_rows: int = 0
  coordinates: str = "periodic"
  predict_residual: bool = False
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  def setup(self):
    self.encoder = RDN3D(self.num_features, self.growth, self.num_blocks, self.num_layers,
                         self.latent_features, self.dtype, self.conv_impl)
    self.mlp = ImplicitMLP(self.mlp_depth, self.mlp_width, self.mlp_skip_after, self.dtype,
                           self.mlp_chunk_rows)

  @property
  def receptive_radius(self) -> int:
    """LR voxels of context on each side that a latent vector depends on (the encoder's)."""
    return RDN3D(self.num_features, self.growth, self.num_blocks, self.num_layers,
                 self.latent_features).receptive_radius

  def encode(self, lr: jax.Array) -> jax.Array:
    """(B, x, y, z, C_in) LR volumes (C_in = 2: DWI, T1; or 1: DWI) -> (B, x, y, z, channels).

    channels = latent_features, plus 1 (the LR DWI, float32) with `predict_residual`.
    """
    latent = self.encoder(lr)
    if self.predict_residual:
      latent = jnp.concatenate([latent.astype(jnp.float32), lr[..., :1].astype(jnp.float32)], -1)
    return latent

  def decode(self, latent: jax.Array, coords: jax.Array) -> jax.Array:
    """Latent (B, x, y, z, L) and coordinates (B, Q, 3) in [-1, 1] -> float32 intensities (B, Q)."""
    return self._intensity(sample_trilinear_batched(latent, coords), coords, latent.shape[1:4],
                           materialise=True)

  def decode_grid(self, latent: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """Latent (B, x, y, z, L) -> float32 (B, X, Y, Z): `decode` at every voxel centre of a grid.

    The X × Y × Z grid covers the latent's field of view (HR voxel centres, as
    `grid_coordinates(shape)`); features are interpolated by
    `sampling.sample_trilinear_grid` (matrix products instead of gathers), the
    same values as `decode` at those coordinates.
    """
    coords = grid_coordinates(shape)
    features = sample_trilinear_grid(latent, shape)
    return self._intensity(features, coords, latent.shape[1:4])

  def _intensity(self, features: jax.Array, coords: jax.Array,
                 latent_shape: tuple[int, int, int], materialise: bool = False) -> jax.Array:
    """MLP([position(coords), features]) (+ the DWI channel of `features` with
    `predict_residual`) -> (...,) float32; features (..., L), coords (..., 3).

    `materialise` makes the MLP's inputs once, whole, behind an optimisation barrier: for
    gathered features, since unbarred XLA fuses the gathers into the MLP's chunk loop and
    the residual, which halves whole-volume decoding speed on CPU (docs/benchmarks.md).
    Separable interpolation (`decode_grid`, training) is faster fused.
    """
    if self.coordinates not in COORDINATE_INPUTS:
      raise ValueError(f"coordinates must be one of {COORDINATE_INPUTS}, got {self.coordinates!r}")
    if self.coordinates == "global":
      position = coords
    else:
      position = local_offsets(coords, latent_shape)
      if self.coordinates == "periodic":
        position = jnp.concatenate([jnp.sin(jnp.pi * position), jnp.cos(jnp.pi * position)], -1)
    position = jnp.broadcast_to(position, features.shape[:-1] + position.shape[-1:])
    inputs = jnp.concatenate([position, features], axis=-1)
    if materialise:
      inputs = jax.lax.optimization_barrier(inputs)
    intensity = self.mlp(inputs.astype(self.dtype))[..., 0].astype(jnp.float32)
    if self.predict_residual:
      intensity = intensity + inputs[..., -1]
    return intensity

  def reconstruct_grid(self, lr: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """(B, x, y, z, C_in) LR volumes -> (B, X, Y, Z): `decode_grid(encode(lr), shape)`."""
    return self.decode_grid(self.encode(lr), shape)

  def __call__(self, lr: jax.Array, coords: jax.Array) -> jax.Array:
    """(B, x, y, z, C_in), (B, Q, 3) -> (B, Q): `decode(encode(lr), coords)`."""
    return self.decode(self.encode(lr), coords)


def init_params(model: CSRdMRI, rng: jax.Array, in_channels: int,
                lr_shape: Sequence[int] = (10, 10, 10)):
  """float32 parameters of `model` for LR inputs with `in_channels` channels (any LR size works later)."""
  lr = jnp.zeros((1, *lr_shape, in_channels), jnp.float32)
  coords = jnp.zeros((1, 1, 3), jnp.float32)
  return jax.jit(model.init)(rng, lr, coords)["params"]
