"""Super-resolution of a user's own scans on arrays: any voxel size, 3D or 4D, T1 and mask,
bounded memory (`upsample`, the Python API `jaxsr.upsample`).

The pieces, one idea each: `settings` (defaults), `model` (the model and its T1), `grid`
(the output grid), `checks` (bad input), `adaptation` (`--adapt` for a series), `volumes`
(the series through the model: intensity rules, data consistency, uncertainty);
`jaxsr.dmri.app.upsample_files` is the same on NIfTI files.
"""

from __future__ import annotations

import os
from typing import Sequence

import nibabel as nib
import numpy as np

from jaxsr import nifti
from jaxsr.dmri.app import adapt as adapt_lib
from jaxsr.dmri.app import uncertainty as uncertainty_lib
from jaxsr.dmri.app.adaptation import adapt_on_series, with_psf
from jaxsr.dmri.app.checks import check_series, lr_mask
from jaxsr.dmri.app.grid import output_grid
from jaxsr.dmri.app.model import Upsampler, load_upsampler
from jaxsr.dmri.app.settings import (DEFAULT_BACK_PROJECTION, DEFAULT_MAX_MEMORY,
                                     DEFAULT_MAX_OUTPUT_VOXELS, DEFAULT_PSF, UpsampleSettings)
from jaxsr.dmri.app.volumes import upsample_volumes


def upsample(data: np.ndarray, affine: np.ndarray,
             checkpoint: str | os.PathLike | Upsampler | None = None, *,
             voxel_size=None, scale=None, shape=None, t1: np.ndarray | None = None,
             t1_affine: np.ndarray | None = None, bvals: np.ndarray | None = None,
             mask: np.ndarray | None = None, max_memory: int = DEFAULT_MAX_MEMORY,
             max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
             back_projection: int = DEFAULT_BACK_PROJECTION,
             psf: str | Sequence[str] | None = DEFAULT_PSF,
             adapt: adapt_lib.AdaptSettings | None = None, batch: int | None = None,
             uncertainty: str | bool | None = None, progress: bool = False,
             record: dict | None = None) -> tuple[np.ndarray, ...]:
  """Super-resolves an (X, Y, Z) or (X, Y, Z, V) array onto a finer grid of its field of view.

  Args:
    data: the LR volume(s); `affine` its (4, 4) voxel -> world mm.
    checkpoint: a run directory (`train.py --workdir`), an exported model folder,
      an `Upsampler`, or None: the general model shipped with jaxsr.
    voxel_size, scale, shape: exactly one: output voxel size in mm, upsampling
      factor, or output voxel counts; one number or three (x, y, z).
    t1, t1_affine: a T1 at its own grid (required by models trained with one).
    bvals: (V,) b-values in s/mm² for 4D diffusion data.
    mask: (X, Y, Z) brain mask on the input grid.
    max_memory: bytes for the whole process; tiles and chunks are sized to fit.
    max_output_voxels: refuse larger output grids (per 3D volume).
    back_projection: iterations of back-projection onto the input (0: none).
    psf: the input's PSF: "auto" (default: decided per axis, `jaxsr.dmri.degradation.acquisition`),
      one name of `jaxsr.dmri.degradation.psf.PSFS` or three (x, y, z), or None (the training
      degradation). Back-projection and adaptation degrade with it ("auto": decided on
      the unadapted model's output for the first volume, or the volume adapted to).
    adapt: fine-tune first (`jaxsr.dmri.app.adapt`), once for the series, on the mean of its
      b0s with `bvals`, else on its first volume (`adaptation_volume`); or None.
    batch: volumes super-resolved together at most (`upsample_volumes`).
    uncertainty: True (the default method) or a method of
      `jaxsr.dmri.app.uncertainty.METHODS`: also return a per-voxel uncertainty, the
      expected absolute error of the output in its units; None or False: not.
    progress: show a progress bar.
    record: a dict that receives what was decided: "psf" and, with `adapt`, "adapt".

  Returns:
    (output, output_affine): float32 (X', Y', Z'[, V]) in the input's units, and
    its (4, 4) voxel -> world mm affine; with `uncertainty`, (output, output_affine,
    uncertainty), the last shaped as the output.
  """
  if uncertainty is True:
    uncertainty = uncertainty_lib.DEFAULT_METHOD
  settings = UpsampleSettings(max_memory, max_output_voxels, back_projection, psf,
                              with_psf(adapt, psf), batch, uncertainty or None)
  data = np.asarray(data, np.float32)
  if data.ndim not in (3, 4) or 0 in data.shape:
    raise nifti.DataError(f"<array>: expected a non-empty 3D or 4D array, got shape {data.shape}")
  if not np.all(np.isfinite(data)):
    raise nifti.DataError("<array>: has non-finite voxels (NaN/inf)")
  num_volumes = data.shape[3] if data.ndim == 4 else 1
  read = (lambda v: data[..., v]) if data.ndim == 4 else (lambda v: data)
  check_series((read(v) for v in range(num_volumes)), "<array>")
  if bvals is not None and np.size(bvals) != num_volumes:
    raise nifti.DataError(f"<bvals>: {np.size(bvals)} b-values for {num_volumes} volumes")
  grid = output_grid(data.shape[:3], affine, voxel_size=voxel_size, scale=scale, shape=shape,
                     max_output_voxels=settings.max_output_voxels)
  t1_volume = (nifti.Volume(np.asarray(t1, np.float32), np.asarray(t1_affine, np.float64),
                            nib.Nifti1Header(), "<t1 array>") if t1 is not None else None)
  upsampler = load_upsampler(checkpoint)
  mask = lr_mask(mask, data.shape[:3], "<mask>")
  record = record if record is not None else {}
  lr_affine = np.asarray(affine, np.float64)
  if settings.adapting:
    upsampler, settings = adapt_on_series(upsampler, read, num_volumes, bvals, lr_affine,
                                          grid.shape, settings, mask=mask, record=record,
                                          progress=progress)
  volumes = upsample_volumes(read, num_volumes, data.shape[:3], lr_affine, grid.shape, upsampler,
                             settings, bvals=bvals, t1=t1_volume, mask=mask, progress=progress,
                             source="<bvals>", record=record)
  if settings.uncertainty is None:
    out = np.stack(list(volumes), axis=-1)
    return (out if data.ndim == 4 else out[..., 0]), grid.affine
  outs, uncertainties = zip(*volumes)
  out, unc = np.stack(outs, axis=-1), np.stack(uncertainties, axis=-1)
  return ((out, grid.affine, unc) if data.ndim == 4
          else (out[..., 0], grid.affine, unc[..., 0]))
