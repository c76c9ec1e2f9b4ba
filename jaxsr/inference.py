"""Arbitrary-scale reconstruction of whole volumes with bounded memory.

The encoder runs once over the LR volume; the implicit decoder then runs over
the HR voxel centres in fixed-size chunks of flat voxel indices, so peak memory
is the latent map plus one chunk's MLP activations, whatever the output size,
and there is one compiled decoder per (latent shape, HR shape).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
