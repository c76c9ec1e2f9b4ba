"""Reconstruction of whole volumes with bounded memory.

Implicit models (`reconstruct`): the encoder runs once over the LR volume; the
decoder then runs over the HR voxel centres in fixed-size chunks of flat voxel
indices, so peak memory is the latent map plus one chunk's MLP activations,
whatever the output size, and there is one compiled decoder per (latent shape,
HR shape).

Fixed-scale CNNs (`reconstruct_fixed_scale`): the LR volume is interpolated onto
the grid of the model's training scale and the CNN runs over overlapping slabs
whose overlap covers its receptive field, so the result equals one whole-volume
pass (BatchNorm uses its running statistics) with one slab's activations in memory.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.data.degrade import resize_spatial, tricubic_upsample
from jaxsr.models.sampling import chunk_coordinates


@functools.partial(jax.jit, static_argnames=("model",))
def encode(model: nn.Module, params, lr: jax.Array) -> jax.Array:
  """(x, y, z, C) LR input -> (x, y, z, F) latent feature map."""
  return model.apply({"params": params}, lr[None], method=model.encode)[0]


@functools.partial(jax.jit, static_argnames=("model", "hr_shape", "chunk_size"))
def decode_chunk(model: nn.Module, params, latent: jax.Array, start: jax.Array,
                 hr_shape: tuple[int, int, int], chunk_size: int) -> jax.Array:
  """Intensities (chunk_size,) at the HR voxels with flat indices start .. start + chunk_size - 1.

  Indices past the end of the grid are clamped to the last voxel; callers drop them.
  """
  coords = chunk_coordinates(hr_shape, start, chunk_size)
  return model.apply({"params": params}, latent[None], coords[None], method=model.decode)[0]


def reconstruct(model: nn.Module, params, lr: np.ndarray, hr_shape: Sequence[int],
                chunk_size: int = 65536) -> np.ndarray:
  """Super-resolves `lr` (x, y, z, C) onto an HR grid of `hr_shape` voxels over the same field of view.

  Returns a float32 (X, Y, Z) array. `chunk_size` HR voxels are decoded at a time.
  """
  hr_shape = tuple(int(n) for n in hr_shape)
  latent = encode(model, params, jnp.asarray(lr, jnp.float32))
  total = math.prod(hr_shape)
  chunk_size = min(chunk_size, total)
  out = np.empty(total, np.float32)
  for start in range(0, total, chunk_size):
    values = decode_chunk(model, params, latent, jnp.int32(start), hr_shape, chunk_size)
    stop = min(start + chunk_size, total)
    out[start:stop] = np.asarray(values[: stop - start])
  return out.reshape(hr_shape)


@functools.partial(jax.jit, static_argnames=("model",))
def apply_fixed_scale(model: nn.Module, variables, volume: jax.Array) -> jax.Array:
  """A fixed-scale CNN (inference mode) on one (X, Y, Z) interpolated volume -> (X, Y, Z)."""
  return model.apply(variables, volume[None, ..., None], train=False)[0, ..., 0]


def apply_tiled(model: nn.Module, variables, volume: np.ndarray, tile_voxels: int) -> np.ndarray:
  """`apply_fixed_scale` over slabs along the first axis, each widened by the receptive radius.

  Slabs hold about `tile_voxels` output voxels; all windows have one shape (one
  compilation). Returns float32 (X, Y, Z), equal to a whole-volume pass.
  """
  size, halo = volume.shape[0], model.receptive_radius
  thickness = max(1, tile_voxels // math.prod(volume.shape[1:]))
  window = min(size, thickness + 2 * halo)
  out = np.empty(volume.shape, np.float32)
  for start in range(0, size, thickness):
    stop = min(start + thickness, size)
    first = min(max(start - halo, 0), size - window)
    values = apply_fixed_scale(model, variables, jnp.asarray(volume[first:first + window]))
    out[start:stop] = np.asarray(values[start - first:stop - first])
  return out


def reconstruct_fixed_scale(model: nn.Module, variables, lr: np.ndarray, hr_shape: Sequence[int],
                            *, scale: float, train_scale: float,
                            tile_voxels: int = 1 << 19) -> np.ndarray:
  """Super-resolves an (x, y, z) LR volume by `scale` with a CNN trained at `train_scale`.

  At scale == train_scale the CNN runs on the LR volume interpolated onto `hr_shape`.
  Otherwise it runs on the grid of its training scale, round(train_scale · n)
  voxels per axis, and its output is resampled (cubic, anti-aliased when
  shrinking) onto `hr_shape`: a 3× model then downsampling for 2.4×, then
  upsampling for 4×. Returns float32 (X, Y, Z).
  """
  hr_shape = tuple(int(n) for n in hr_shape)
  if math.isclose(scale, train_scale, rel_tol=1e-6):
    native = hr_shape
  else:
    native = tuple(max(1, int(round(n * train_scale))) for n in lr.shape)
  volume = np.asarray(tricubic_upsample(jnp.asarray(lr, jnp.float32), native))
  out = apply_tiled(model, variables, volume, tile_voxels)
  if native != hr_shape:
    out = np.asarray(resize_spatial(jnp.asarray(out), hr_shape, antialias=True))
  return out
