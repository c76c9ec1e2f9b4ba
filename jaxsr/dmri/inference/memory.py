"""Memory planning for whole-volume reconstruction: the largest encoder tile and decoder chunk
that fit a byte budget, from the sizes XLA reports for the compiled programs.

`reconstruct` (`jaxsr.dmri.inference.reconstruct`) then processes a volume tile by tile and
chunk by chunk as a `MemoryPlan` says; its peak is the latent map plus one tile's
or one chunk's activations, whatever the output size.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr.dmri.models.conv import resolve_conv_impl
from jaxsr.dmri.inference.reconstruct import decode_chunk, encode, window_shape
from jaxsr.errors import JaxsrError
from jaxsr.train.parameters import count_parameters

MAX_RECOMPUTE = 8  # tiles may encode at most this many times the volume's voxels (overlaps)


# Time per voxel of the encoder with the native 3D convolution over that with the 2D form, on
# CPU (measured in docs/benchmarks.md, rounded down).
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
    conv_impl: the encoder's convolution (`jaxsr.dmri.models.conv.CONV_IMPLS`, resolved).
    batch: volumes of a series that go through the model together (`plan_batch`); the
      bytes above are those of the whole batch.
  """
  tile: tuple[int, int, int]
  chunk_size: int
  encoder_bytes: int
  decoder_bytes: int
  fixed_bytes: int
  runtime_bytes: int
  conv_impl: str = "xla"
  batch: int = 1

  @property
  def peak_bytes(self) -> int:
    """The estimated peak: runtime + fixed arrays + the larger of one tile and one chunk."""
    return self.runtime_bytes + self.fixed_bytes + max(self.encoder_bytes, self.decoder_bytes)

  def num_passes(self, lr_shape: Sequence[int], hr_shape: Sequence[int]) -> int:
    """Tiles plus chunks of one `reconstruct` call (of one batch): the `progress` units it
    reports."""
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
                max_chunk_size: int = 1 << 18, batch: int = 1) -> MemoryPlan:
  """The largest encoder tile and decoder chunk whose memory fits `max_bytes` in all, for
  `batch` volumes reconstructed together (one `reconstruct` call on a batch).

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
  lead = (batch,) if batch > 1 else ()  # a single volume runs unbatched (its own program)
  # float32: parameters, and per volume the latent map on device and on the host, the LR
  # input and a tile of it, and a few HR volumes (the output, its copies, back-projection's
  # resize temporaries)
  fixed = 4 * (count_parameters(params) + batch * (2 * lr_voxels * latent_features
                                                   + 2 * lr_voxels * in_channels + 8 * hr_voxels))
  available = max_bytes - runtime_bytes - fixed

  def decoder_bytes(count):
    latent = jax.ShapeDtypeStruct((*lead, *lr_shape, latent_features), jnp.float32)
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
                                    lr_shape, available, runtime_bytes + fixed, max_bytes, lead)
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
  return MemoryPlan(core, chunk, encoder, decoder, fixed, runtime_bytes, conv_impl, batch)


def plan_batch(model: nn.Module, params, in_channels: int, lr_shape: Sequence[int],
               hr_shape: Sequence[int], max_bytes: int, max_batch: int,
               runtime_bytes: int | None = None) -> MemoryPlan:
  """`plan_memory` for the largest batch of volumes, up to `max_batch` (halving), that the
  budget holds with whole volumes through the encoder (one pass, no tiles); where none
  does, one volume at a time, tiled as needed.

  Raises:
    MemoryBudgetError: as `plan_memory`, when not even one volume fits.
  """
  lr_shape = tuple(int(n) for n in lr_shape)
  # Measured once: the attempts' own compilations must not count against the next attempt.
  runtime_bytes = resident_bytes() if runtime_bytes is None else int(runtime_bytes)
  batch = max(1, int(max_batch))
  while batch > 1:
    try:
      plan = plan_memory(model, params, in_channels, lr_shape, hr_shape, max_bytes,
                         runtime_bytes, batch=batch)
      if plan.tile == lr_shape:
        return plan
    except MemoryBudgetError:
      pass
    batch //= 2
  return plan_memory(model, params, in_channels, lr_shape, hr_shape, max_bytes, runtime_bytes)


def _plan_encoder(model: nn.Module, params, in_channels: int, lr_shape: tuple[int, ...],
                  available: float, committed: int, max_bytes: int, lead: tuple[int, ...] = ()
                  ) -> tuple[tuple[int, ...], int]:
  """(tile core, XLA bytes of one window) of the cheapest tiling whose windows fit `available`.

  The window's memory is measured on two probe tiles (8^3 and 16^3 voxels) as a
  fixed part (e.g. reshaped kernels) plus a part per voxel, then on the chosen
  window. `committed` (runtime and fixed arrays) only enters the error message; `lead` is
  the batch axis of a batch's windows, () for one volume.

  Raises:
    MemoryBudgetError: when no tiling that fits encodes less than `MAX_RECOMPUTE`
      times the volume; the message gives the least budget that would do.
  """
  def encoder_bytes(window):
    return _compiled_bytes(encode, model, params,
                           jax.ShapeDtypeStruct((*lead, *window, in_channels), jnp.float32))

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
