"""The `jaxsr upsample` command on NIfTI files: validated inputs, streamed output, atomic writes.

Every input is checked before any computation; the output is written volume by
volume (`upsample_volumes`) under temporary names and renamed only when complete,
with a JSON sidecar beside it (OUT.json: the model and the SHA-256 of its weights,
the jaxsr version, the input, the grid, the settings and the time taken).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import pathlib
import shutil
import time
from typing import Callable, Iterator

import nibabel as nib
import nibabel.affines
import numpy as np

from jaxsr import files, nifti
from jaxsr.dmri import acquisition
from jaxsr.dmri import adapt as adapt_lib
from jaxsr.dmri import btable
from jaxsr.dmri.memory import MemoryPlan, plan_memory
from jaxsr.dmri.upsample import (DEFAULT_BACK_PROJECTION, DEFAULT_MAX_MEMORY,
                                 DEFAULT_MAX_OUTPUT_VOXELS, DEFAULT_PSF, OutputGrid, Upsampler,
                                 adapt_on_first_volume, check_magnitude, check_t1,
                                 load_upsampler, lr_mask, output_grid, prepare_adaptation,
                                 save_adapted_model, upsample_volumes, with_psf)
from jaxsr.errors import UpsampleError
from jaxsr.outputs import check_outputs, companion_path, nifti_output


@dataclasses.dataclass(frozen=True)
class UpsampleResult:
  """What `upsample_files` wrote: the files, the output grid, volumes, memory plan, seconds,
  and what was decided on the scan (the sidecar's "psf" and "adapt")."""
  files: list[str]
  grid: OutputGrid
  num_volumes: int
  plan: MemoryPlan
  seconds: float
  decided: dict = dataclasses.field(default_factory=dict)


def output_targets(out: pathlib.Path, bvals, bvecs, preview) -> dict[str, pathlib.Path]:
  """{"image", "sidecar", and "bval"/"bvec" with a gradient table, "preview" with one: path}
  of a request."""
  if preview is not None and pathlib.Path(preview).suffix.lower() != ".png":
    raise UpsampleError(f"{preview}: the preview must be a .png file")
  if (bvals is None) != (bvecs is None):
    raise UpsampleError("give --bvals and --bvecs together")
  targets = {"image": out, "sidecar": companion_path(out, ".json")}
  if bvals is not None:
    targets.update(bval=companion_path(out, ".bval"), bvec=companion_path(out, ".bvec"))
  if preview is not None:
    targets["preview"] = pathlib.Path(preview)
  return targets


def check_save_adapted(save_adapted, adapt: adapt_lib.AdaptSettings | None,
                       overwrite: bool) -> None:
  """UpsampleError unless `--save-adapted` comes with `--adapt` and a folder it may write."""
  if save_adapted is None:
    return
  if adapt is None or not adapt.steps:
    raise UpsampleError("--save-adapted needs --adapt STEPS")
  if pathlib.Path(save_adapted).exists() and not overwrite:
    raise UpsampleError(f"{save_adapted}: already exists (use --overwrite to replace it)")


def write_outputs(targets: dict[str, pathlib.Path], source: nifti.LazyVolume, grid: OutputGrid,
                  volumes: Iterator[np.ndarray], bvals, bvecs, *, preview_title: str,
                  sidecar: Callable[[], dict], overwrite: bool = False) -> None:
  """Writes the output NIfTI volume by volume, the gradient table, the preview and the JSON
  sidecar (`sidecar()`, called once the volumes are written), each under a temporary name
  renamed only when all are complete (none is left behind on failure), together and, without
  `overwrite`, never over a file another run made meanwhile (`files.publish_together`)."""
  temps = {name: files.temporary_path(path) for name, path in targets.items()}
  first = {}

  def remembering_first() -> Iterator[np.ndarray]:
    for index, volume in enumerate(volumes):
      if index == 0:
        first["output"] = volume
      yield volume

  out_shape = grid.shape + ((source.num_volumes,) if len(source.shape) == 4 else ())
  zooms = source.header.get_zooms()
  try:
    with files.write_errors(targets["image"]):
      nifti.write_volumes(temps["image"], out_shape, grid.affine, remembering_first(),
                          header=source.header,
                          repetition_time=zooms[3] if len(zooms) > 3 else None)
    if bvals is not None:
      with files.write_errors(targets["bval"]):
        shutil.copyfile(bvals, temps["bval"])
        shutil.copyfile(bvecs, temps["bvec"])
    with files.write_errors(targets["sidecar"]):
      files.write_json(temps["sidecar"], sidecar())
    if "preview" in targets:
      from jaxsr.dmri import figures  # matplotlib on use: it slows every command's start-up

      with files.write_errors(targets["preview"]):
        figures.upsample_preview(source.volume(0), source.affine, first["output"], grid.affine,
                                 temps["preview"], title=preview_title)
    files.publish_together(temps, targets, overwrite)
  finally:
    for temp in temps.values():
      if temp.exists():
        temp.unlink()


def sidecar_record(upsampler: Upsampler, dwi, source: nifti.LazyVolume, grid: OutputGrid,
                   adapt: adapt_lib.AdaptSettings | None, back_projection: int, decided: dict,
                   seconds: float) -> dict:
  """What the JSON sidecar beside an output records: the model and the exact weights, the
  jaxsr version, the input, the grid, the settings, what was decided on the scan
  (`decided`: the PSF, and with --adapt the adaptation's held-out losses and decision)
  and the time taken."""
  return {
      "GeneratedBy": {"Name": "jaxsr", "Version": importlib.metadata.version("jaxsr")},
      "model": {"source": upsampler.run_dir, "step": upsampler.step,
                "kind": upsampler.config.model.kind if upsampler.config is not None else None,
                "params_sha256": upsampler.params_sha256()},
      "input": {"file": os.path.abspath(dwi), "shape": list(source.shape),
                "voxel_size_mm": [float(v) for v in nib.affines.voxel_sizes(source.affine)]},
      "output": {"shape": list(grid.shape) + list(source.shape[3:]),
                 "voxel_size_mm": [float(v) for v in grid.voxel_size],
                 "scale": [float(n / m) for n, m in zip(grid.shape, source.shape[:3])]},
      "settings": {"back_projection": back_projection,
                   "psf": decided.get("psf", {}).get("per_axis"),
                   "adapt_steps": adapt.steps if adapt is not None else 0},
      **decided,
      "seconds": round(seconds, 3),
  }


def upsample_files(checkpoint: str | os.PathLike | Upsampler | None, dwi: str | os.PathLike,
                   out: str | os.PathLike, *, t1: str | os.PathLike | None = None,
                   bvals: str | os.PathLike | None = None, bvecs: str | os.PathLike | None = None,
                   mask: str | os.PathLike | None = None, voxel_size=None, scale=None, shape=None,
                   max_memory: int = DEFAULT_MAX_MEMORY,
                   max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
                   back_projection: int = DEFAULT_BACK_PROJECTION,
                   psf: str | tuple[str, str, str] | None = DEFAULT_PSF,
                   adapt: adapt_lib.AdaptSettings | None = None,
                   save_adapted: str | os.PathLike | None = None,
                   preview: str | os.PathLike | None = None, overwrite: bool = False,
                   progress: bool = True, sidecar_extra: dict | None = None) -> UpsampleResult:
  """The `jaxsr upsample` command on files; see `upsample` for the arguments' meaning.

  Every input is validated before any computation. The output NIfTI is written
  volume by volume under a temporary name beside `out` (with `bvals`/`bvecs`
  copied to OUT.bval / OUT.bvec and the `preview` PNG likewise) and renamed
  only when all are complete, so a failure leaves none of them behind. The JSON
  sidecar OUT.json (`sidecar_record`, updated with `sidecar_extra`) goes with them. With
  `adapt`, the model is first fine-tuned on the first volume; `save_adapted`
  then names a folder to export the adapted model to (`jaxsr.dmri.pretrained`).

  Raises:
    DataError, CheckpointError, PretrainedError, UpsampleError (grid request,
    size limit, output path), AdaptError, PSFError, MemoryBudgetError: one line
    naming the problem.
  """
  out = nifti_output(out)
  targets = output_targets(out, bvals, bvecs, preview)
  check_outputs(targets.values(), overwrite, inputs=(dwi, t1, bvals, bvecs, mask))
  psf = acquisition.psf_option(psf)
  adapt = with_psf(adapt, psf)
  check_save_adapted(save_adapted, adapt, overwrite)
  upsampler = load_upsampler(checkpoint)
  check_t1(upsampler, t1)
  source = nifti.open_volume(dwi)
  lr_shape = source.shape[:3]
  table = (btable.load_bvals_bvecs(bvals, bvecs, source.num_volumes, source.path)[0]
           if bvals is not None else None)
  grid = output_grid(lr_shape, source.affine, voxel_size=voxel_size, scale=scale, shape=shape,
                     max_output_voxels=max_output_voxels)
  mask_array = None
  if mask is not None:
    mask_array = lr_mask(nifti.mask_on_grid(mask, lr_shape, source.affine), lr_shape,
                          os.fspath(mask))
  t1_volume = nifti.load_volume(t1, ndim=3) if t1 is not None else None
  check_magnitude(max(float(np.max(source.volume(i))) for i in range(source.num_volumes)),
                  source.path)  # every voxel is read and checked before any output is made
  prepare_adaptation(upsampler, lr_shape, grid.shape, adapt)
  plan = plan_memory(upsampler.model, upsampler.params, upsampler.in_channels, lr_shape,
                     grid.shape, max_memory)

  start = time.perf_counter()
  decided = {}
  if adapt is not None and adapt.steps:
    upsampler, psf, adapt = adapt_on_first_volume(
        upsampler, source.volume(0), source.affine, grid.shape, psf, adapt, mask=mask_array,
        record=decided, plan=plan, progress=progress)
  volumes = upsample_volumes(
      source.volume, source.num_volumes, lr_shape, source.affine, grid.shape, upsampler,
      bvals=table, t1=t1_volume, mask=mask_array, plan=plan, back_projection=back_projection,
      psf=psf, progress=progress, source=os.fspath(bvals or dwi), record=decided)
  write_outputs(targets, source, grid, volumes, bvals, bvecs,
                preview_title=f"{pathlib.Path(dwi).name} → {out.name}", overwrite=overwrite,
                sidecar=lambda: {**sidecar_record(upsampler, dwi, source, grid, adapt,
                                                  back_projection, decided,
                                                  time.perf_counter() - start),
                                 **(sidecar_extra or {})})
  if save_adapted is not None:
    save_adapted_model(upsampler, save_adapted, adapt, os.fspath(dwi),
                       kept=decided["adapt"]["kept"])
    targets["adapted"] = pathlib.Path(save_adapted)
  return UpsampleResult([os.fspath(p) for p in targets.values()], grid, source.num_volumes, plan,
                        time.perf_counter() - start, decided)
