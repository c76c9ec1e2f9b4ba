"""Reconstruction of whole volumes with bounded memory.

Implicit models (`reconstruct`): the encoder runs over the LR volume, whole or in
overlapping tiles (`encode_tiled`) whose overlap covers its receptive field, so
the latent map equals one whole-volume pass; the decoder then runs over the HR
voxel centres in fixed-size chunks of flat voxel indices. Peak memory is the
latent map plus one tile's or one chunk's activations, whatever the output size;
`plan_memory` picks the largest tile and chunk that fit a byte budget, from the
sizes XLA reports for the compiled programs. There is one compiled encoder per
tile shape and one decoder per (latent shape, HR shape). Forward passes over
volumes (the encoder, fixed-scale CNNs) compile with
`jaxsr.models.conv.forward_compiler_options`.

Fixed-scale CNNs (`reconstruct_fixed_scale`): the LR volume is interpolated onto
the grid of the model's training scale and the CNN runs over overlapping slabs
whose overlap covers its receptive field, so the result equals one whole-volume
pass (BatchNorm uses its running statistics) with one slab's activations in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.data.degrade import resize_spatial, tricubic_upsample
from jaxsr.errors import JaxsrError
from jaxsr.models.conv import forward_compiler_options, resolve_conv_impl
from jaxsr.models.sampling import chunk_coordinates


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
  """(x, y, z, C) LR input -> (x, y, z, F) latent feature map, with the model's convolution."""
  return model.apply({"params": params}, lr[None], method="encode")[0]


@functools.partial(jax.jit, static_argnames=("model", "hr_shape", "chunk_size"))
def decode_chunk(model: nn.Module, params, latent: jax.Array, start: jax.Array,
                 hr_shape: tuple[int, int, int], chunk_size: int) -> jax.Array:
  """Intensities (chunk_size,) at the HR voxels with flat indices start .. start + chunk_size - 1.

  Indices past the end of the grid are clamped to the last voxel; callers drop them.
  """
  coords = chunk_coordinates(hr_shape, start, chunk_size)
  return model.apply({"params": params}, latent[None], coords[None], method=model.decode)[0]


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
  """The latent map (x, y, z, F) of `lr` (x, y, z, C), encoded over overlapping tiles.

  Tiles have cores of `core` LR voxels per axis and are widened by the encoder's
  `receptive_radius`, so the result equals `encode` on the whole volume; all
  windows have one shape (one compilation). `progress(1)` is called per tile.
  """
  halo = model.receptive_radius
  tiles = [axis_tiles(n, c, halo) for n, c in zip(lr.shape[:3], core)]
  window = window_shape(lr.shape[:3], core, halo)
  out = None
  for tile in itertools.product(*tiles):
    source = tuple(slice(first, first + w) for (first, _, _), w in zip(tile, window))
    values = encode(model, params, jnp.asarray(lr[source], jnp.float32))
    if out is None:
      out = np.empty(lr.shape[:3] + values.shape[-1:], np.float32)
    inner = tuple(slice(start - first, stop - first) for first, start, stop in tile)
    out[tuple(slice(start, stop) for _, start, stop in tile)] = np.asarray(values[inner])
    if progress is not None:
      progress(1)
  return jnp.asarray(out)


def reconstruct(model: nn.Module, params, lr: np.ndarray, hr_shape: Sequence[int],
                chunk_size: int = 65536, tile: Sequence[int] | None = None,
                progress: Callable[[int], object] | None = None,
                conv_impl: str | None = None) -> np.ndarray:
  """Super-resolves `lr` (x, y, z, C) onto an HR grid of `hr_shape` voxels over the same field of view.

  Returns a float32 (X, Y, Z) array. The encoder runs on the whole volume, or
  over tiles with cores of `tile` LR voxels per axis (`encode_tiled`, same
  result), with the convolution `conv_impl` (`jaxsr.models.conv.CONV_IMPLS`; by
  default the model's); then `chunk_size` HR voxels are decoded at a time.
  `progress(n)` is called after each tile and each chunk (see `num_passes`). A
  `MemoryPlan` gives `chunk_size`, `tile` and `conv_impl`.
  """
  hr_shape = tuple(int(n) for n in hr_shape)
  encoder = model if conv_impl is None else model.clone(conv_impl=conv_impl)
  if tile is None or tuple(tile) == tuple(lr.shape[:3]):
    latent = encode(encoder, params, jnp.asarray(lr, jnp.float32))
    if progress is not None:
      latent.block_until_ready()  # report the pass when it is done, not when it is queued
      progress(1)
  else:
    latent = encode_tiled(encoder, params, lr, tile, progress)
  total = math.prod(hr_shape)
  chunk_size = min(chunk_size, total)
  out = np.empty(total, np.float32)
  for start in range(0, total, chunk_size):
    values = decode_chunk(model, params, latent, jnp.int32(start), hr_shape, chunk_size)
    stop = min(start + chunk_size, total)
    out[start:stop] = np.asarray(values[: stop - start])
    if progress is not None:
      progress(1)
  return out.reshape(hr_shape)


MAX_RECOMPUTE = 8  # tiles may encode at most this many times the volume's voxels (overlaps)
# Time per voxel of the encoder with the native 3D convolution over that with the 2D form, on
# CPU (docs/benchmarks.md: 107 s against 41 s for the default encoder on an HCP-size input).
NATIVE_CONV_SLOWDOWN = 2.5


class MemoryBudgetError(JaxsrError, ValueError):
  """The memory budget cannot hold even the smallest tile or chunk of a reconstruction."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """How `reconstruct` processes one volume within a memory budget.

  Attributes:
    tile: cores of the encoder tiles, LR voxels per axis (the LR shape: one pass).
    chunk_size: HR voxels decoded at a time.
    encoder_bytes: XLA working memory (temporaries and output) of one tile.
    decoder_bytes: XLA working memory of one decoder chunk.
    fixed_bytes: arrays held throughout: the parameters, the latent map (device and
      host copies), the LR input and a few HR volumes (output, back-projection).
    runtime_bytes: the process's resident memory before reconstructing (interpreter,
      libraries, JAX runtime), counted against the budget.
    conv_impl: the encoder's convolution (`jaxsr.models.conv.CONV_IMPLS`, resolved).
  """
  tile: tuple[int, int, int]
  chunk_size: int
  encoder_bytes: int
  decoder_bytes: int
  fixed_bytes: int
  runtime_bytes: int
  conv_impl: str = "xla"

  @property
  def peak_bytes(self) -> int:
    """The estimated peak: runtime + fixed arrays + the larger of one tile and one chunk."""
    return self.runtime_bytes + self.fixed_bytes + max(self.encoder_bytes, self.decoder_bytes)

  def num_passes(self, lr_shape: Sequence[int], hr_shape: Sequence[int]) -> int:
    """Tiles plus chunks of one `reconstruct` call: the `progress` units it reports."""
    tiles = math.prod(math.ceil(n / c) for n, c in zip(lr_shape, self.tile))
    return tiles + math.ceil(math.prod(hr_shape) / self.chunk_size)


def resident_bytes() -> int:
  """This process's resident memory now (Linux /proc), or 0 where that cannot be read."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return 0


def _compiled_bytes(function, *args) -> int:
  """Temporaries and outputs XLA allocates for `function` compiled on these (abstract) arguments.

  Arguments are not counted: parameters and the latent map are resident anyway.
  """
  stats = function.lower(*args).compile().memory_analysis()
  return int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def plan_memory(model: nn.Module, params, in_channels: int, lr_shape: Sequence[int],
                hr_shape: Sequence[int], max_bytes: int, runtime_bytes: int | None = None,
                max_chunk_size: int = 1 << 18) -> MemoryPlan:
  """The largest encoder tile and decoder chunk whose memory fits `max_bytes` in all.

  Encoder and decoder memory are measured from XLA's compiled programs: on two
  probe tiles (8^3 and 16^3 voxels: activations grow linearly with the tile's
  voxels, on top of a fixed part such as reshaped kernels), then on the chosen
  tile and chunk. Of the tilings that fit, the one that encodes the
  fewest voxels in all (windows overlap by the receptive radius) is taken: the
  whole volume in one pass when it fits, slabs or blocks otherwise. Where the
  model's convolution is a 2D form (CPU) that has to tile, the native 3D one
  (less memory, `NATIVE_CONV_SLOWDOWN` times slower) is planned too and taken
  when it encodes that many times fewer voxels, or is the only one that fits.
  `runtime_bytes` defaults to the process's resident memory now.

  Raises:
    MemoryBudgetError: when no tiling that fits encodes less than `MAX_RECOMPUTE`
      times the volume, or no 1024-voxel chunk fits; the message gives the
      least budget that would do.
  """
  lr_shape = tuple(int(n) for n in lr_shape)
  hr_shape = tuple(int(n) for n in hr_shape)
  runtime_bytes = resident_bytes() if runtime_bytes is None else int(runtime_bytes)
  latent_features = jax.eval_shape(
      functools.partial(model.apply, method="encode"), {"params": params},
      jax.ShapeDtypeStruct((1, 1, 1, 1, in_channels), jnp.float32)).shape[-1]
  lr_voxels, hr_voxels = math.prod(lr_shape), math.prod(hr_shape)
  # float32: parameters, latent map on device and on the host, LR input and a tile of it,
  # and a few HR volumes (the output, its copies, back-projection's resize temporaries)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  fixed = 4 * (num_params + 2 * lr_voxels * latent_features + 2 * lr_voxels * in_channels
               + 8 * hr_voxels)
  available = max_bytes - runtime_bytes - fixed

  def decoder_bytes(count):
    latent = jax.ShapeDtypeStruct((*lr_shape, latent_features), jnp.float32)
    return _compiled_bytes(decode_chunk, model, params, latent,
                           jax.ShapeDtypeStruct((), jnp.int32), hr_shape, count)

  # The model's convolution first; where it is a 2D form (CPU) that has to tile, the native
  # 3D one too: slower, but with less memory it may tile with so much less overlap that it
  # finishes first. Ties go to the model's form; with neither fitting, the native form's
  # error names the smaller budget.
  own = resolve_conv_impl(model.conv_impl)
  candidates, error = [], None  # (voxels x slowdown, not own form, conv_impl, core, bytes)
  for conv_impl in dict.fromkeys((own, "xla")):
    try:
      core, encoder = _plan_encoder(model.clone(conv_impl=conv_impl), params, in_channels,
                                    lr_shape, available, runtime_bytes + fixed, max_bytes)
    except MemoryBudgetError as failure:
      error = failure
      continue
    slowdown = NATIVE_CONV_SLOWDOWN if conv_impl != own else 1
    candidates.append((slowdown * tiling_work(lr_shape, core, model.receptive_radius)[1],
                       conv_impl != own, conv_impl, core, encoder))
    if core == lr_shape:
      break  # one pass with the model's own form: nothing is faster
  if not candidates:
    raise error
  *_, conv_impl, core, encoder = min(candidates)
  probe_chunk = min(4096, hr_voxels)
  per_query = decoder_bytes(probe_chunk) / probe_chunk
  chunk = min(hr_voxels, max_chunk_size, int(available // per_query) // 1024 * 1024)
  smallest = min(1024, hr_voxels)
  decoder = decoder_bytes(chunk) if chunk >= smallest else 0
  while decoder > available and chunk > smallest:  # check the linear estimate, as for tiles
    chunk = max(smallest, chunk * 3 // 4 // 1024 * 1024)
    decoder = decoder_bytes(chunk)
  if chunk < smallest or decoder > available:
    least = runtime_bytes + fixed + max(encoder, per_query * smallest)
    raise MemoryBudgetError(
        f"a memory budget of {format_bytes(max_bytes)} is too small to reconstruct a "
        f"{hr_shape} output from a {lr_shape} input with this model; it needs at least "
        f"{format_bytes(least)}")
  return MemoryPlan(core, chunk, encoder, decoder, fixed, runtime_bytes, conv_impl)


def _plan_encoder(model: nn.Module, params, in_channels: int, lr_shape: tuple[int, ...],
                  available: float, committed: int, max_bytes: int) -> tuple[tuple[int, ...], int]:
  """(tile core, XLA bytes of one window) of the cheapest tiling whose windows fit `available`.

  The window's memory is measured on two probe tiles (8^3 and 16^3 voxels) as a
  fixed part (e.g. reshaped kernels) plus a part per voxel, then on the chosen
  window. `committed` (runtime and fixed arrays) only enters the error message.

  Raises:
    MemoryBudgetError: when no tiling that fits encodes less than `MAX_RECOMPUTE`
      times the volume; the message gives the least budget that would do.
  """
  def encoder_bytes(window):
    return _compiled_bytes(encode, model, params,
                           jax.ShapeDtypeStruct((*window, in_channels), jnp.float32))

  halo = model.receptive_radius
  small, large = (tuple(min(n, edge) for n in lr_shape) for edge in (8, 16))
  small_bytes = encoder_bytes(small)
  per_voxel = small_bytes / math.prod(small)
  if math.prod(large) > math.prod(small):
    slope = (encoder_bytes(large) - small_bytes) / (math.prod(large) - math.prod(small))
    per_voxel = slope if slope > 0 else per_voxel
  base = max(0.0, small_bytes - per_voxel * math.prod(small))  # bytes of any window
  limit = (available - base) / per_voxel  # window voxels that fit
  while True:  # the linear estimate is checked on the real tile shape
    core = _cheapest_core(lr_shape, halo, limit, MAX_RECOMPUTE)
    if core is None:
      least = _least_window(lr_shape, halo, MAX_RECOMPUTE)
      raise MemoryBudgetError(
          f"a memory budget of {format_bytes(max_bytes)} is too small for this model's encoder "
          f"on a {lr_shape} input: its tiles overlap by {halo} voxels on each side, and tiling "
          f"within {MAX_RECOMPUTE}x the work needs at least "
          f"{format_bytes(committed + base + per_voxel * least)}")
    encoder = encoder_bytes(window_shape(lr_shape, core, halo))
    if encoder <= available:
      return core, encoder
    limit = 0.75 * min(limit, math.prod(window_shape(lr_shape, core, halo)))


def tiling_work(shape: Sequence[int], core: Sequence[int], halo: int) -> tuple[int, int]:
  """(voxels of one window, voxels encoded over all windows) for tiles with cores `core`."""
  window = window_shape(shape, core, halo)
  tiles = [math.ceil(n / max(1, min(c, n))) for n, c in zip(shape, core)]
  return math.prod(window), math.prod(t * w for t, w in zip(tiles, window))


def _core_candidates(shape: Sequence[int]) -> list[tuple[int, ...]]:
  """Tile cores worth trying: per axis, ceil(n / k) for every tile count k (whole axis first)."""
  per_axis = [sorted({math.ceil(n / k) for k in range(1, n + 1)}, reverse=True) for n in shape]
  return list(itertools.product(*per_axis))


def _cheapest_core(shape: tuple[int, ...], halo: int, max_window: float,
                   max_recompute: float) -> tuple[int, int, int] | None:
  """The tile core whose windows fit `max_window` voxels with the least total work.

  Work is the voxels encoded over all (overlapping) windows; None when every
  core that fits would encode more than `max_recompute` times the volume.
  """
  best, best_work = None, max_recompute * math.prod(shape)
  for core in _core_candidates(shape):
    window, work = tiling_work(shape, core, halo)
    if window <= max_window and work <= best_work:
      best, best_work = core, work
  return best


def _least_window(shape: tuple[int, ...], halo: int, max_recompute: float) -> int:
  """The smallest window (voxels) of any tiling within `max_recompute` times the volume's work."""
  return min(window for window, work in (tiling_work(shape, c, halo)
                                         for c in _core_candidates(shape))
             if work <= max_recompute * math.prod(shape))


def format_bytes(count: float) -> str:
  """`count` bytes as MiB or GiB, e.g. '1.5 GiB'."""
  return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


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
