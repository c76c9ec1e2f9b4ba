"""Reconstruction of whole volumes with bounded memory.

Implicit models (`reconstruct`): the encoder runs over the LR volume, whole or in
overlapping tiles (`encode_tiled`) whose overlap covers its receptive field, so
the latent map equals one whole-volume pass; the decoder then runs over the HR
voxel centres in fixed-size chunks of flat voxel indices. Peak memory is the
latent map plus one tile's or one chunk's activations, whatever the output size
(`jaxsr.dmri.inference.memory.plan_memory` picks the tile and chunk for a byte budget).
There is one compiled encoder per tile shape and one decoder per (latent shape,
HR shape). Forward passes over
volumes (the encoder, fixed-scale CNNs) compile with
`jaxsr.dmri.models.conv.forward_compiler_options`.

Fixed-scale CNNs (`reconstruct_fixed_scale`): the LR volume is interpolated onto
the grid of the model's training scale and the CNN runs over overlapping slabs
whose overlap covers its receptive field, so the result equals one whole-volume
pass (BatchNorm uses its running statistics) with one slab's activations in memory.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.dmri.degradation.degrade import resize_spatial, tricubic_upsample
from jaxsr.dmri.models.conv import forward_compiler_options
from jaxsr.dmri.models.sampling import chunk_coordinates


class ForwardProgram:
  """`jax.jit(function, static_argnames=...)` compiled with `forward_compiler_options()`.

  The options depend on the backend, which is only asked on first use (importing
  this module does not initialise JAX's backends). Call it as the jitted
  function; `lower` is the jitted function's. Compiler options belong to whole
  programs, so it cannot be called inside another jit (trace `__wrapped__` there).
  """

  def __init__(self, function: Callable, static_argnames: Sequence[str]):
    functools.update_wrapper(self, function)  # sets __wrapped__ = function
    self._static_argnames = tuple(static_argnames)

  @functools.cached_property
  def jitted(self) -> Callable:
    return jax.jit(self.__wrapped__, static_argnames=self._static_argnames,
                   compiler_options=forward_compiler_options())

  def __call__(self, *args, **kwargs):
    return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self.jitted.lower(*args, **kwargs)


@functools.partial(ForwardProgram, static_argnames=("model",))
def encode(model: nn.Module, params, lr: jax.Array) -> jax.Array:
  """(x, y, z, C) LR input -> (x, y, z, F) latent feature map, with the model's convolution;
  a batch (B, x, y, z, C) -> (B, x, y, z, F)."""
  batched = lr.ndim == 5
  latent = model.apply({"params": params}, lr if batched else lr[None], method="encode")
  return latent if batched else latent[0]


@functools.partial(jax.jit, static_argnames=("model", "hr_shape", "chunk_size"))
def decode_chunk(model: nn.Module, params, latent: jax.Array, start: jax.Array,
                 hr_shape: tuple[int, int, int], chunk_size: int) -> jax.Array:
  """Intensities (chunk_size,) at the HR voxels with flat indices start .. start + chunk_size - 1
  of a latent map (x, y, z, F); (B, chunk_size) for a batch of them (B, x, y, z, F).

  Indices past the end of the grid are clamped to the last voxel; callers drop them.
  """
  batched = latent.ndim == 5
  latent = latent if batched else latent[None]
  coords = jnp.broadcast_to(chunk_coordinates(hr_shape, start, chunk_size),
                            (latent.shape[0], chunk_size, 3))
  values = model.apply({"params": params}, latent, coords, method=model.decode)
  return values if batched else values[0]


def axis_tiles(size: int, core: int, halo: int) -> list[tuple[int, int, int]]:
  """Overlapping windows along one axis of `size` voxels: (first, start, stop) per tile.

  The cores [start, stop) of `core` voxels (the last may be shorter) partition the
  axis; every window [first, first + window) has the one length
  window = min(size, core + 2 * halo) and holds its core with `halo` voxels on
  each side, except where the window meets the volume's border. A model whose
  output depends on at most `halo` voxels on each side (zero 'SAME' padding)
  thus gives the same core values on the window as on the whole axis.
  """
  core = max(1, min(int(core), size))
  window = min(size, core + 2 * halo)
  tiles = []
  for start in range(0, size, core):
    first = min(max(start - halo, 0), size - window)
    tiles.append((first, start, min(start + core, size)))
  return tiles


def window_shape(shape: Sequence[int], core: Sequence[int], halo: int) -> tuple[int, ...]:
  """The window (voxels per axis) of `axis_tiles` tiles with cores `core` on a grid of `shape`."""
  return tuple(min(n, max(1, min(int(c), n)) + 2 * halo) for n, c in zip(shape, core))


def encode_tiled(model: nn.Module, params, lr: np.ndarray, core: Sequence[int],
                 progress: Callable[[int], object] | None = None) -> jax.Array:
  """The latent map (x, y, z, F) of `lr` (x, y, z, C), encoded over overlapping tiles; a batch
  (B, x, y, z, C) -> (B, x, y, z, F), the batch's tiles encoded together.

  Tiles have cores of `core` LR voxels per axis and are widened by the encoder's
  `receptive_radius`, so the result equals `encode` on the whole volume; all
  windows have one shape (one compilation). `progress(1)` is called per tile.
  """
  halo = model.receptive_radius
  spatial = lr.shape[-4:-1]
  tiles = [axis_tiles(n, c, halo) for n, c in zip(spatial, core)]
  window = window_shape(spatial, core, halo)
  out = None
  for tile in itertools.product(*tiles):
    source = tuple(slice(first, first + w) for (first, _, _), w in zip(tile, window))
    values = encode(model, params, jnp.asarray(lr[(..., *source, slice(None))], jnp.float32))
    if out is None:
      out = np.empty(lr.shape[:-1] + values.shape[-1:], np.float32)
    inner = tuple(slice(start - first, stop - first) for first, start, stop in tile)
    core_slices = tuple(slice(start, stop) for _, start, stop in tile)
    out[(..., *core_slices, slice(None))] = np.asarray(values[(..., *inner, slice(None))])
    if progress is not None:
      progress(1)
  return jnp.asarray(out)


def reconstruct(model: nn.Module, params, lr: np.ndarray, hr_shape: Sequence[int],
                chunk_size: int = 65536, tile: Sequence[int] | None = None,
                progress: Callable[[int], object] | None = None,
                conv_impl: str | None = None) -> np.ndarray:
  """Super-resolves `lr` (x, y, z, C) onto an HR grid of `hr_shape` voxels over the same field of view.

  Returns a float32 (X, Y, Z) array; for a batch `lr` (B, x, y, z, C), (B, X, Y, Z), each
  volume's values those of its own call (the batch shares every tile's and chunk's
  program). The encoder runs on the whole volume, or
  over tiles with cores of `tile` LR voxels per axis (`encode_tiled`, same
  result), with the convolution `conv_impl` (`jaxsr.dmri.models.conv.CONV_IMPLS`; by
  default the model's); then `chunk_size` HR voxels are decoded at a time.
  `progress(n)` is called after each tile and each chunk (see `num_passes`). A
  `MemoryPlan` gives `chunk_size`, `tile` and `conv_impl`.
  """
  hr_shape = tuple(int(n) for n in hr_shape)
  encoder = model if conv_impl is None else model.clone(conv_impl=conv_impl)
  if tile is None or tuple(tile) == tuple(lr.shape[-4:-1]):
    latent = encode(encoder, params, jnp.asarray(lr, jnp.float32))
    if progress is not None:
      latent.block_until_ready()  # report the pass when it is done, not when it is queued
      progress(1)
  else:
    latent = encode_tiled(encoder, params, lr, tile, progress)
  total = math.prod(hr_shape)
  chunk_size = min(chunk_size, total)
  batch = lr.shape[:-4]
  out = np.empty(batch + (total,), np.float32)
  for start in range(0, total, chunk_size):
    values = decode_chunk(model, params, latent, jnp.int32(start), hr_shape, chunk_size)
    stop = min(start + chunk_size, total)
    out[..., start:stop] = np.asarray(values[..., : stop - start])
    if progress is not None:
      progress(1)
  return out.reshape(batch + hr_shape)


@functools.partial(ForwardProgram, static_argnames=("model",))
def apply_fixed_scale(model: nn.Module, variables, volume: jax.Array) -> jax.Array:
  """A fixed-scale CNN (inference mode) on one (X, Y, Z) interpolated volume -> (X, Y, Z)."""
  return model.apply(variables, volume[None, ..., None], train=False)[0, ..., 0]


def apply_tiled(model: nn.Module, variables, volume: np.ndarray, tile_voxels: int) -> np.ndarray:
  """`apply_fixed_scale` over slabs along the first axis, each widened by the receptive radius.

  Slabs hold about `tile_voxels` output voxels; all windows have one shape (one
  compilation). Returns float32 (X, Y, Z), equal to a whole-volume pass.
  """
  halo = model.receptive_radius
  thickness = max(1, tile_voxels // math.prod(volume.shape[1:]))
  window = window_shape(volume.shape[:1], (thickness,), halo)[0]
  out = np.empty(volume.shape, np.float32)
  for first, start, stop in axis_tiles(volume.shape[0], thickness, halo):
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
