"""Reconstruction of whole volumes with bounded memory.

Implicit models (`reconstruct`): the encoder runs over the LR volume, whole or in
overlapping tiles (`encode_tiled`) whose overlap covers its receptive field, so
the latent map equals one whole-volume pass; the decoder then runs over the HR
voxel centres in fixed-size chunks of flat voxel indices. Peak memory is the
latent map plus one tile's or one chunk's activations, whatever the output size;
`plan_memory` picks the largest tile and chunk that fit a byte budget, from the
sizes XLA reports for the compiled programs. There is one compiled encoder per
tile shape and one decoder per (latent shape, HR shape).

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
from jaxsr.models.conv import resolve_conv_impl
from jaxsr.models.sampling import chunk_coordinates


def forward_conv_impl(model_impl: str) -> str:
  """The encoder convolution for forward passes over whole volumes, given `model.conv_impl`.

  "auto" on CPU is "depth_summed": on an HCP-size volume (72 × 87 × 72 LR voxels,
  default model) its encoder pass took 48 s against 99 s for the native one. The
  training form `depth_taps` took as long, but its 2D convolutions held about
  200 MiB more memory outside XLA's buffers there, memory the plan's estimate
  (`plan_memory`) would not see. Elsewhere `resolve_conv_impl(model_impl)`.
  """
  if model_impl == "auto" and jax.default_backend() == "cpu":
    return "depth_summed"
  return resolve_conv_impl(model_impl)


@functools.partial(jax.jit, static_argnames=("model", "conv_impl"))
def encode(model: nn.Module, params, lr: jax.Array, conv_impl: str = "xla") -> jax.Array:
  """(x, y, z, C) LR input -> (x, y, z, F) latent feature map.

  `conv_impl` is the encoder's convolution (`jaxsr.models.conv.CONV_IMPLS`; all
  give the same values). The native one by default; the faster 2D forms on CPU
  need more memory (`forward_conv_impl`), so `plan_memory` chooses one only
  where the whole volume still fits in one pass with it.
  """
  return model.clone(conv_impl=conv_impl).apply({"params": params}, lr[None], method="encode")[0]


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
                 progress: Callable[[int], object] | None = None,
                 conv_impl: str = "xla") -> jax.Array:
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
    values = encode(model, params, jnp.asarray(lr[source], jnp.float32), conv_impl)
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
                conv_impl: str = "xla") -> np.ndarray:
  """Super-resolves `lr` (x, y, z, C) onto an HR grid of `hr_shape` voxels over the same field of view.

  Returns a float32 (X, Y, Z) array. The encoder (convolution `conv_impl`, see
  `encode`) runs on the whole volume, or over tiles with cores of `tile` LR
  voxels per axis (`encode_tiled`, same result); then `chunk_size` HR voxels are
  decoded at a time. `progress(n)` is called after each tile and each chunk (see
  `num_passes`). A `MemoryPlan` gives `chunk_size`, `tile` and `conv_impl`.
  """
  hr_shape = tuple(int(n) for n in hr_shape)
  if tile is None or tuple(tile) == tuple(lr.shape[:3]):
    latent = encode(model, params, jnp.asarray(lr, jnp.float32), conv_impl)
    if progress is not None:
      progress(1)
  else:
    latent = encode_tiled(model, params, lr, tile, progress, conv_impl)
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
# Inputs smaller than this (32^3 voxels) keep the native convolution: their encoder pass is
# short, and measuring the 2D form's memory would cost one more compilation than it saves.
MIN_VOXELS_FOR_2D_FORM = 1 << 15


def whole_volume_conv_impl(model: nn.Module, lr_shape: Sequence[int]) -> str:
  """The fastest encoder convolution for one pass over an `lr_shape` input, memory aside.

  `forward_conv_impl(model.conv_impl)` for inputs of at least
  `MIN_VOXELS_FOR_2D_FORM` voxels, the native one below.
  """
  if math.prod(lr_shape) < MIN_VOXELS_FOR_2D_FORM:
    return "xla"
  return forward_conv_impl(model.conv_impl)


class MemoryBudgetError(ValueError):
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
    conv_impl: the encoder's convolution (see `encode`).
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

  Encoder and decoder memory are measured from XLA's compiled programs: once on
  a probe tile (activations grow linearly with the tile's voxels), then on the
  chosen tile and chunk. Of the tilings that fit, the one that encodes the
  fewest voxels in all (windows overlap by the receptive radius) is taken: the
  whole volume in one pass when it fits, slabs or blocks otherwise. In one pass
  over an input of at least `MIN_VOXELS_FOR_2D_FORM` voxels, the faster
  convolution form `forward_conv_impl(model.conv_impl)` (on CPU a 2D form that
  needs more memory) replaces the native one when it fits too.
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
      lambda: encode(model, params, jnp.zeros((1, 1, 1, in_channels), jnp.float32))).shape[-1]
  lr_voxels, hr_voxels = math.prod(lr_shape), math.prod(hr_shape)
  # float32: parameters, latent map on device and on the host, LR input and a tile of it,
  # and a few HR volumes (the output, its copies, back-projection's resize temporaries)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  fixed = 4 * (num_params + 2 * lr_voxels * latent_features + 2 * lr_voxels * in_channels
               + 8 * hr_voxels)
  available = max_bytes - runtime_bytes - fixed

  def encoder_bytes(window):
    return _compiled_bytes(encode, model, params,
                           jax.ShapeDtypeStruct((*window, in_channels), jnp.float32))

  def decoder_bytes(count):
    latent = jax.ShapeDtypeStruct((*lr_shape, latent_features), jnp.float32)
    return _compiled_bytes(decode_chunk, model, params, latent,
                           jax.ShapeDtypeStruct((), jnp.int32), hr_shape, count)

  halo = model.receptive_radius
  probe = tuple(min(n, 8) for n in lr_shape)
  per_voxel = encoder_bytes(probe) / math.prod(probe)
  limit = available / per_voxel  # window voxels that fit
  while True:  # the linear estimate is checked on the real tile shape
    core = _cheapest_core(lr_shape, halo, limit, MAX_RECOMPUTE)
    if core is None:
      least = _least_window(lr_shape, halo, MAX_RECOMPUTE)
      raise MemoryBudgetError(
          f"a memory budget of {format_bytes(max_bytes)} is too small for this model's encoder "
          f"on a {lr_shape} input: its tiles overlap by {halo} voxels on each side, and tiling "
          f"within {MAX_RECOMPUTE}x the work needs at least "
          f"{format_bytes(runtime_bytes + fixed + per_voxel * least)}")
    encoder = encoder_bytes(window_shape(lr_shape, core, halo))
    if encoder <= available:
      break
    limit = 0.75 * min(limit, math.prod(window_shape(lr_shape, core, halo)))
  conv_impl = "xla"
  own = whole_volume_conv_impl(model, lr_shape)
  if own != "xla" and core == lr_shape:
    own_bytes = _compiled_bytes(encode, model, params,
                                jax.ShapeDtypeStruct((*lr_shape, in_channels), jnp.float32), own)
    if own_bytes <= available:
      conv_impl, encoder = own, own_bytes
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


@functools.partial(jax.jit, static_argnames=("model",))
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
