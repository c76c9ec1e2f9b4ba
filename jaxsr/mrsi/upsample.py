"""`jaxsr upsample-mrsi`: a trained MRSI network on a user's metabolite map, slice by slice.

The map is a 3D NIfTI of n × n in-plane voxels (the acquired matrix, n even)
and S slices, as an MRSI reconstruction writes it. MRSI maps are Fourier
reconstructions, so the high-resolution grid is the one whose central n × n
k-space the map is: N × N voxels (N = 64, the network's grid) over the same
field of view, voxel (0, 0) of both grids at the same place (the FFT's
geometry: in-plane voxel i of the output lies at map index i · n / N). The map
is zero-filled onto it in k-space (intensity preserved), the T1 and FLAIR are
resampled onto it through their affines (cubic) and scaled to [0, 1] as in
training (99.5th percentile), and each slice's zero-filled map is divided by
its own scale (`pipeline.input_scale`, the normalisation of training and
evaluation, computed from the map alone), super-resolved at the requested
sharpness λ and multiplied back: the output is in the map's units.

Rejected voxels: NaN or inf voxels of the map (how quality-filtered maps often
mark them) and voxels outside `--mask` are rejected; the output is 0 where the
nearest map voxel is rejected, as the network was trained to do.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import kspace, nifti
from jaxsr.anatomy import normalise_t1
from jaxsr.errors import UpsampleError
from jaxsr.mrsi import phantom, pipeline
from jaxsr.mrsi import step as step_lib
from jaxsr.outputs import check_outputs, nifti_output

# Other names of the metabolites in `phantom.METABOLITES` (lower case).
ALIASES = {"cho": "tCho", "gpc+pch": "tCho", "cr": "tCr", "cr+pcr": "tCr", "naa+naag": "NAA",
           "tnaa": "NAA", "mi": "Ins", "myo-inositol": "Ins"}


def metabolite_index(name: str) -> int:
  """Index into `phantom.METABOLITES` of `name` (case-insensitive; Cho, Cr, mI and the like accepted)."""
  lookup = {m.lower(): m for m in phantom.METABOLITES} | ALIASES
  canonical = lookup.get(name.strip().lower())
  if canonical is None:
    raise UpsampleError(f"metabolite {name!r} is not one the network knows: "
                        f"{', '.join(phantom.METABOLITES)}")
  return phantom.METABOLITES.index(canonical)


def output_affine(affine: np.ndarray, n: int, size: int) -> np.ndarray:
  """The N × N grid's affine: in-plane voxel axes scaled by n / N, voxel (0, 0) kept in place."""
  out = np.array(affine, dtype=np.float64)
  out[:3, :2] *= n / size
  return out


@dataclasses.dataclass(frozen=True)
class MRSIUpsampleResult:
  """What `upsample_mrsi_files` wrote: the output file, its shape, n, N and seconds taken."""
  path: str
  shape: tuple[int, ...]
  n: int
  size: int
  seconds: float


def _load_map(path: str | os.PathLike) -> tuple[nifti.Volume, np.ndarray, np.ndarray]:
  """The map file, its (n, n, S) values (rejected voxels 0) and the valid-voxel mask."""
  source = nifti.load_volume(path, ndim=3, require_finite=False)
  valid = np.isfinite(source.data)
  return source, np.where(valid, source.data, 0.0).astype(np.float32), valid


def upsample_mrsi_files(checkpoint: str | os.PathLike, map_path: str | os.PathLike,
                        out: str | os.PathLike, *, t1: str | os.PathLike,
                        flair: str | os.PathLike, metabolite: str, sharpness: float = 0.0,
                        mask: str | os.PathLike | None = None, overwrite: bool = False
                        ) -> MRSIUpsampleResult:
  """Super-resolves a metabolite map file onto the network's N × N grid (see the module doc).

  Raises:
    DataError, CheckpointError, UpsampleError: one line naming the problem; nothing
      is written then (the output goes to a temporary name, renamed at the end).
  """
  start = time.perf_counter()
  out = nifti_output(out)
  check_outputs([out], overwrite, inputs=(map_path, t1, flair, mask))
  from jaxsr.train.checkpoint import load_run  # on use: slow to import, `jaxsr upsample` needs none

  run = load_run(checkpoint, family_steps=[step_lib])
  met = metabolite_index(metabolite)
  lambda_max = run.config.train.lambda_max if run.config.train.adversarial else 0.0
  if not 0.0 <= sharpness <= lambda_max:
    raise UpsampleError(
        f"--sharpness {sharpness:g} is outside what {checkpoint} was trained for: "
        + (f"0 to {lambda_max:g}" if lambda_max else
           "0 only (trained without the adversarial loss; use a sharpness run)"))
  source, values, valid = _load_map(map_path)
  n, n_y, num_slices = source.data.shape
  size = phantom.MAP_SIZE
  n_values = tuple(run.config.data.n_values)
  if n != n_y or n % 2:
    raise nifti.DataError(f"{source.path}: in-plane matrix {n} × {n_y}; the network takes square "
                          "maps of an even matrix size")
  if not min(n_values) <= n <= max(n_values):
    raise nifti.DataError(f"{source.path}: matrix {n} × {n}; the network in {checkpoint} was "
                          f"trained for n from {min(n_values)} to {max(n_values)}")
  if mask is not None:
    valid &= nifti.mask_on_grid(mask, source.data.shape, source.affine) > 0
  hr_affine = output_affine(source.affine, n, size)
  hr_shape = (size, size, num_slices)
  nearest = (np.arange(size) * n / size).round().astype(int).clip(0, n - 1)
  hr_mask = valid[np.ix_(nearest, nearest, np.arange(num_slices))]
  if not hr_mask.any():
    raise nifti.DataError(f"{source.path}: no valid (finite, inside the mask) voxel")
  anatomy = {}
  for name, path in (("t1", t1), ("flair", flair)):
    volume = nifti.load_volume(path, ndim=3)
    resampled = nifti.resample_to_grid(volume, hr_shape, hr_affine, order=3, mask=hr_mask)
    anatomy[name] = normalise_t1(resampled, hr_mask & (resampled > 0), volume.path,
                                          "the map's valid voxels")

  lr = kspace.zero_fill(values, hr_shape, voxel_centres=False)
  apply = jax.jit(lambda *inputs: run.model.apply(run.variables, *inputs))
  output = np.zeros(hr_shape, np.float32)
  for s in range(num_slices):
    inside = hr_mask[..., s]
    if not inside.any():
      continue  # nothing measured in this slice
    scale = float(pipeline.input_scale(lr[..., s]))
    batch = lambda a: jnp.asarray(a[None], jnp.float32)
    result = apply(batch(lr[..., s] / scale), batch(anatomy["t1"][..., s]),
                   batch(anatomy["flair"][..., s]), jnp.asarray([n]), jnp.asarray([met]),
                   jnp.asarray([sharpness], jnp.float32), batch(inside))
    output[..., s] = np.asarray(result[0]) * scale
  if not np.all(np.isfinite(output)):
    raise UpsampleError(f"{source.path}: the network gave non-finite values; nothing written")
  nifti.save_volume(out, output, hr_affine, header=source.header)  # temp name, then renamed
  return MRSIUpsampleResult(os.fspath(out), hr_shape, n, size, time.perf_counter() - start)
