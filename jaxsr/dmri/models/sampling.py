"""Voxel coordinates and trilinear sampling of feature maps.

Coordinate convention (the whole library depends on it):

  An axis of N voxels spans the field of view [-1, 1]. Voxel i (0 <= i < N)
  is the cell [2i/N - 1, 2(i+1)/N - 1] and its centre is at

      c = (2i + 1) / N - 1,

  the half-voxel ("align_corners=False") convention of `jax.image.resize`.
  A continuous coordinate c maps back to the continuous voxel index

      x = ((c + 1) N - 1) / 2.

  An LR grid of n voxels and an HR grid of N voxels covering the same field of
  view share this frame, so HR voxel centres are queried directly in the LR
  feature map: an HR centre at c falls at continuous LR index ((c + 1) n - 1) / 2.

Grids are indexed (X, Y, Z) with the last coordinate component varying fastest
in flat (C-order) voxel indices; coordinates are float32 with components
ordered (x, y, z). The functions are jitted (shapes and counts static, given as
ints / tuples of ints), so eager calls cost one compilation per shape.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _centre(index: jax.Array, n: int) -> jax.Array:
  """Coordinate in [-1, 1] of the centre of voxel `index` on an axis of `n` voxels."""
  return (2 * index.astype(jnp.float32) + 1 - n) / n


def continuous_index(coords: jax.Array, n: int) -> jax.Array:
  """Continuous voxel index ((c + 1) n - 1) / 2 of coordinates c on an axis of `n` voxels."""
  return ((coords + 1) * n - 1) / 2


def local_offsets(coords: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Position of coordinates (..., 3) relative to the nearest voxel centre of a grid of `shape`.

  Per axis 2 (u - round(u)) with u the continuous voxel index: -1 and 1 are the
  faces of the nearest voxel's cell, 0 its centre. Unlike c itself, this does
  not depend on how large the grid (a training patch or a whole volume) is.
  """
  index = jnp.stack([continuous_index(coords[..., a], n) for a, n in enumerate(shape)], axis=-1)
  return 2 * (index - jnp.round(index))


@functools.partial(jax.jit, static_argnums=0)
def voxel_centres(n: int) -> jax.Array:
  """(n,) float32 coordinates of the voxel centres of an axis of `n` voxels."""
  return _centre(jnp.arange(n), n)


@functools.partial(jax.jit, static_argnums=0)
def grid_coordinates(shape: Sequence[int]) -> jax.Array:
  """(X, Y, Z, 3) float32 coordinates of every voxel centre of a grid of `shape` (X, Y, Z)."""
  axes = [voxel_centres(n) for n in shape]
  return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 2))
def chunk_coordinates(shape: Sequence[int], start: jax.Array | int, count: int) -> jax.Array:
  """(count, 3) coordinates of the voxels with flat indices start .. start + count - 1.

  Flat indices are C-order over `shape` (X, Y, Z), so chunks tile
  `grid_coordinates(shape).reshape(-1, 3)`. `start` may be a traced integer
  (one compiled program for every chunk); `count` is static. Indices past the
  end of the grid give coordinates beyond +1 on the first axis, which the
  caller drops.
  """
  _, ny, nz = shape
  flat = start + jnp.arange(count, dtype=jnp.int32)
  indices = (flat // (ny * nz), (flat // nz) % ny, flat % nz)
  return jnp.stack([_centre(i, n) for i, n in zip(indices, shape)], axis=-1)


@jax.jit
def sample_trilinear(features: jax.Array, coords: jax.Array) -> jax.Array:
  """Trilinear interpolation of a feature map at continuous coordinates.

  Args:
    features: (X, Y, Z, C) feature map; voxel centres follow the module's
      convention.
    coords: (Q, 3) query coordinates in [-1, 1] (x, y, z order). Coordinates
      beyond the outermost voxel centres are clamped to them (edge values).

  Returns:
    (Q, C) interpolated features: eight corner gathers on the flattened map,
    weighted by the fractional voxel index. Differentiable in both arguments.
  """
  shape = features.shape[:3]
  flat_features = features.reshape(-1, features.shape[-1])
  lower, upper, frac = [], [], []
  for axis, n in enumerate(shape):
    x = jnp.clip(continuous_index(coords[:, axis], n), 0, n - 1)
    i0 = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, max(n - 2, 0))
    lower.append(i0)
    upper.append(jnp.minimum(i0 + 1, n - 1))
    frac.append(x - i0)

  out = 0
  for corner in itertools.product((0, 1), repeat=3):
    index, weight = 0, 1
    for axis, (n, bit) in enumerate(zip(shape, corner)):
      index = index * n + (upper if bit else lower)[axis]
      weight = weight * (frac[axis] if bit else 1 - frac[axis])
    out = out + weight[:, None] * jnp.take(flat_features, index, axis=0)
  return out


def sample_trilinear_batched(features: jax.Array, coords: jax.Array) -> jax.Array:
  """Batched `sample_trilinear`: (B, X, Y, Z, C), (B, Q, 3) -> (B, Q, C)."""
  return jax.vmap(sample_trilinear)(features, coords)


def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) float32 weights of `sample_trilinear` along one axis, at voxel centres.

  Row j holds the linear-interpolation weights that the centre of voxel j of an
  n_out-voxel axis gets from the n_in voxels of the same field of view (clamped
  at the outermost centres, as `sample_trilinear`).
  """
  centres = (2 * np.arange(n_out) + 1 - n_out) / n_out
  x = np.clip(((centres + 1) * n_in - 1) / 2, 0, n_in - 1)
  lower = np.clip(np.floor(x).astype(np.int64), 0, max(n_in - 2, 0))
  upper = np.minimum(lower + 1, n_in - 1)
  matrix = np.zeros((n_out, n_in), np.float64)
  np.add.at(matrix, (np.arange(n_out), lower), 1 - (x - lower))
  np.add.at(matrix, (np.arange(n_out), upper), x - lower)
  return matrix.astype(np.float32)


def sample_trilinear_grid(features: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Trilinear samples at every voxel centre of a grid: (B, x, y, z, C) -> (B, X, Y, Z, C).

  Equals `sample_trilinear_batched(features, grid_coordinates(shape))` (reshaped),
  but trilinear interpolation onto a regular grid is separable, so it is three
  matrix products with `interpolation_matrix`s: no gathers forward and no
  scatter-adds backward, which is what the train step (every HR voxel of a
  patch) and slab decoding need. `shape` is static (X, Y, Z).
  """
  for axis, n in zip((1, 2, 3), shape):
    matrix = jnp.asarray(interpolation_matrix(int(n), features.shape[axis]), features.dtype)
    features = jnp.moveaxis(jnp.tensordot(matrix, features, axes=([1], [axis])), 0, axis)
  return features
