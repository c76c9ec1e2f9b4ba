"""The `jaxsr upsample` command on NIfTI files: validated inputs, streamed output, atomic writes.

Every input is checked before any computation; the output is written volume by
volume (`upsample_volumes`) under temporary names and renamed only when complete,
with a JSON sidecar beside it (OUT.json: the model and the SHA-256 of its weights,
the jaxsr version, the input, the grid, the settings and the time taken).
"""

from __future__ import annotations

import contextlib
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

from jaxsr import files, nifti, prefetch
from jaxsr.dmri.app import adapt as adapt_lib
from jaxsr.dmri.app import uncertainty as uncertainty_lib
from jaxsr.dmri.app.adaptation import (adapt_on_series, prepare_adaptation, save_adapted_model,
                                       with_psf)
from jaxsr.dmri.app.checks import check_series, lr_mask
from jaxsr.dmri.app.grid import OutputGrid, output_grid
from jaxsr.dmri.app.model import Upsampler, check_t1, load_upsampler
from jaxsr.dmri.app.settings import (DEFAULT_BACK_PROJECTION, DEFAULT_MAX_MEMORY,
                                     DEFAULT_MAX_OUTPUT_VOXELS, DEFAULT_PSF, UpsampleSettings,
                                     default_batch)
from jaxsr.dmri.app.volumes import upsample_volumes
from jaxsr.dmri.data import btable
from jaxsr.dmri.inference.memory import MemoryPlan, plan_batch
from jaxsr.errors import UpsampleError
from jaxsr.outputs import check_outputs, companion_path, nifti_output


@dataclasses.dataclass(frozen=True)
class UpsampleResult:
  """What `upsample_files` wrote: the files, the output grid, volumes, memory plan, seconds,
  what was decided on the scan (the sidecar's "psf" and "adapt"), the seconds per stage
  (the sidecar's "timing") and lines the user should read (the sidecar's "notes")."""
  files: list[str]
  grid: OutputGrid
  num_volumes: int
  plan: MemoryPlan
  seconds: float
  decided: dict = dataclasses.field(default_factory=dict)
  timing: dict = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)


def output_targets(out: pathlib.Path, bvals, bvecs, preview, uncertainty=None, report=None
                   ) -> dict[str, pathlib.Path]:
  """{"image", "sidecar", and "bval"/"bvec" with a gradient table, "preview", "uncertainty",
  "report" with one: path} of a request."""
  if preview is not None and pathlib.Path(preview).suffix.lower() != ".png":
    raise UpsampleError(f"{preview}: the preview must be a .png file")
  if report is not None and pathlib.Path(report).suffix.lower() not in (".html", ".htm"):
    raise UpsampleError(f"{report}: the report must be an .html file")
  if uncertainty is not None:
    uncertainty = nifti_output(uncertainty)
    if uncertainty == out:
      raise UpsampleError(f"{uncertainty}: the uncertainty map needs a file of its own")
  if (bvals is None) != (bvecs is None):
    raise UpsampleError("give --bvals and --bvecs together")
  targets = {"image": out, "sidecar": companion_path(out, ".json")}
  if bvals is not None:
    targets.update(bval=companion_path(out, ".bval"), bvec=companion_path(out, ".bvec"))
  if preview is not None:
    targets["preview"] = pathlib.Path(preview)
  if uncertainty is not None:
    targets["uncertainty"] = uncertainty
  if report is not None:
    targets["report"] = pathlib.Path(report)
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


def shown_volumes(num_volumes: int, bvals: np.ndarray | None) -> list[tuple[str, list[int]]]:
  """What the report shows of a series: [(name, the volumes averaged for it)]: the mean b0 and
  the first diffusion-weighted volume where b-values name b0s, the first and last volume of
  another 4D series, the volume of a 3D one."""
  b0s = ([int(i) for i in btable.b0_indices(bvals, required=False)]
         if bvals is not None else [])
  if b0s:
    shown = [(f"mean b0 (volumes {', '.join(map(str, b0s))})", b0s)]
    weighted = [i for i in range(num_volumes) if i not in b0s]
    if weighted:
      shown.append((f"volume {weighted[0]} (b = {bvals[weighted[0]]:g} s/mm²)", [weighted[0]]))
    return shown
  if num_volumes > 1:
    return [("volume 0", [0]), (f"volume {num_volumes - 1}", [num_volumes - 1])]
  return [("the volume", [0])]


class _Shown:
  """Collects, while the volumes stream past, the outputs (and uncertainties) the report and
  the preview show: per `shown_volumes` entry the mean over its volumes."""

  def __init__(self, selection: list[tuple[str, list[int]]]):
    self.selection = selection
    self.sums: dict[int, list] = {}

  def add(self, index: int, output: np.ndarray, uncertainty: np.ndarray | None) -> None:
    for entry, (_, indices) in enumerate(self.selection):
      if index in indices:
        total = self.sums.setdefault(entry, [0.0, 0.0 if uncertainty is not None else None])
        total[0] = total[0] + output / len(indices)
        if uncertainty is not None:
          total[1] = total[1] + uncertainty / len(indices)

  def volumes(self, source: nifti.LazyVolume) -> list:
    """[`jaxsr.dmri.app.report.ShownVolume`] of the selection, inputs read from `source`."""
    from jaxsr.dmri.app import report  # matplotlib and jinja2 on use: they slow start-up

    return [report.ShownVolume(
        name, np.mean([source.volume(i) for i in indices], axis=0, dtype=np.float32),
        self.sums[entry][0], self.sums[entry][1])
        for entry, (name, indices) in enumerate(self.selection)]


def write_outputs(targets: dict[str, pathlib.Path], source: nifti.LazyVolume, grid: OutputGrid,
                  volumes: Iterator[tuple[np.ndarray, np.ndarray | None]], bvals, bvecs, *,
                  preview_title: str, sidecar: Callable[[], dict], overwrite: bool = False,
                  shown: list[tuple[str, list[int]]] | None = None,
                  report_sections: list | None = None, bvec_text: str | None = None) -> None:
  """Writes the output NIfTI volume by volume (and the uncertainty NIfTI beside it, where
  `targets` has "uncertainty" and `volumes` gives each volume's map), the gradient table,
  the JSON sidecar (`sidecar()`, called once the volumes are written), the preview and the
  HTML report (`targets` "preview", "report"; `shown`: what the report shows; its section,
  `jaxsr.dmri.app.report.section`, is also appended to `report_sections`), each under a
  temporary name renamed only when all are complete (none is left behind on failure),
  together and, without `overwrite`, never over a file another run made meanwhile
  (`files.publish_together`)."""
  temps = {name: files.temporary_path(path) for name, path in targets.items()}
  out_shape = grid.shape + ((source.num_volumes,) if len(source.shape) == 4 else ())
  zooms = source.header.get_zooms()
  kept = _Shown(shown or [("the volume", [0])])
  header = dict(header=source.header, repetition_time=zooms[3] if len(zooms) > 3 else None)
  try:
    with contextlib.ExitStack() as stack:
      stack.enter_context(files.write_errors(targets["image"]))
      image = stack.enter_context(nifti.VolumeWriter(temps["image"], out_shape, grid.affine,
                                                     **header))
      spread = (stack.enter_context(nifti.VolumeWriter(temps["uncertainty"], out_shape,
                                                       grid.affine, **header))
                if "uncertainty" in targets else None)
      for index, (volume, uncertainty) in enumerate(volumes):
        if index == 0:
          first_output = volume
        image.write(volume)
        if spread is not None:
          spread.write(uncertainty)
        kept.add(index, volume, uncertainty)
    if bvals is not None:
      with files.write_errors(targets["bval"]):
        shutil.copyfile(bvals, temps["bval"])
        if bvec_text is None:
          shutil.copyfile(bvecs, temps["bvec"])
        else:  # NaN rows of b0 volumes (dipy's example has them) written as 0
          files.write_text(temps["bvec"], bvec_text)
    record = sidecar()
    if "preview" in targets:
      from jaxsr.dmri import figures  # matplotlib on use: it slows every command's start-up

      with files.write_errors(targets["preview"]):
        figures.upsample_preview(source.volume(0), source.affine, first_output, grid.affine,
                                 temps["preview"], title=preview_title)
    if "report" in targets or report_sections is not None:
      from jaxsr.dmri.app import report  # matplotlib and jinja2 on use: they slow start-up

      began = time.perf_counter()
      section = report.section(record, kept.volumes(source), source.affine, grid.affine,
                               preview_title)
      if report_sections is not None:
        report_sections.append(section)
      if "report" in targets:
        with files.write_errors(targets["report"]):
          report.write_report(temps["report"], preview_title, [section])
      record["timing"]["report"] = round(time.perf_counter() - began, 3)
    with files.write_errors(targets["sidecar"]):  # last: it holds the report's own time
      files.write_json(temps["sidecar"], record)
    files.publish_together(temps, targets, overwrite)
  finally:
    for temp in temps.values():
      if temp.exists():
        temp.unlink()


def sidecar_record(upsampler: Upsampler, dwi, source: nifti.LazyVolume, grid: OutputGrid,
                   settings: UpsampleSettings, decided: dict, seconds: float,
                   timing: dict | None = None) -> dict:
  """What the JSON sidecar beside an output records: the model and the exact weights, the
  jaxsr version, the input, the grid, the settings, what was decided on the scan
  (`decided`: the PSF, and with --adapt the adaptation's held-out losses and decision),
  the time taken and, in "timing", seconds per stage (`upsample_files`)."""
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
      "settings": {"back_projection": settings.back_projection,
                   "psf": decided.get("psf", {}).get("per_axis"),
                   "adapt_steps": settings.adapt.steps if settings.adapt is not None else 0,
                   "uncertainty": settings.uncertainty},
      **decided,
      "seconds": round(seconds, 3),
      "timing": {stage: round(value, 3) for stage, value in (timing or {}).items()},
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
                   preview: str | os.PathLike | None = None,
                   uncertainty: str | os.PathLike | None = None,
                   report: str | os.PathLike | None = None, overwrite: bool = False,
                   batch: int | None = None, progress: bool = True,
                   sidecar_extra: dict | None = None,
                   report_sections: list | None = None) -> UpsampleResult:
  """The `jaxsr upsample` command on files; see `upsample` for the arguments' meaning.

  Every input is validated before any computation. The output NIfTI is written
  volume by volume under a temporary name beside `out` (with `bvals`/`bvecs`
  copied to OUT.bval / OUT.bvec and the `preview` PNG likewise) and renamed
  only when all are complete, so a failure leaves none of them behind. The JSON
  sidecar OUT.json (`sidecar_record`, updated with `sidecar_extra`) goes with them, and so
  do `uncertainty`, a NIfTI of the output's shape holding each voxel's expected absolute
  error (`jaxsr.dmri.app.uncertainty`, the default method), and `report`, a self-contained
  HTML page (`jaxsr.dmri.app.report`; it shows the uncertainty, computed for it when
  `uncertainty` is not asked); `report_sections`, a list, receives the report's section
  instead or as well (`jaxsr bids` gathers a participant's scans on one page). A
  series is one job: one memory plan and compilation, `batch` volumes through the model
  together as memory allows (`upsample_volumes`), each volume written while the next is
  computed (`jaxsr.prefetch.ahead`). With `adapt`, the model is first fine-tuned once for
  the series (`adapt_on_series`: the mean b0 with b-values, else the first volume);
  `save_adapted` then names a folder to export the adapted model to (`jaxsr.dmri.app.pretrained`).
  The sidecar's "timing" gives seconds per stage: "plan" (memory plan and compilation),
  "adapt", "volumes" (super-resolving every volume), "write_wait" (what of that the
  writer waited for) and "written" (from the first volume's start to the last one written;
  writing overlaps computing, so this is less than "volumes" plus writing).

  Raises:
    DataError, CheckpointError, PretrainedError, UpsampleError (grid request,
    size limit, output path), AdaptError, PSFError, MemoryBudgetError: one line
    naming the problem.
  """
  out = nifti_output(out)
  targets = output_targets(out, bvals, bvecs, preview, uncertainty, report)
  check_outputs(targets.values(), overwrite, inputs=(dwi, t1, bvals, bvecs, mask))
  wants_uncertainty = uncertainty or report or report_sections is not None
  settings = UpsampleSettings(max_memory, max_output_voxels, back_projection, psf,
                              with_psf(adapt, psf), batch,
                              uncertainty_lib.DEFAULT_METHOD if wants_uncertainty else None)
  check_save_adapted(save_adapted, settings.adapt, overwrite)
  upsampler = load_upsampler(checkpoint)
  check_t1(upsampler, t1)
  source = nifti.open_volume(dwi)
  lr_shape = source.shape[:3]
  table = (btable.load_bvals_bvecs(bvals, bvecs, source.num_volumes, source.path)[0]
           if bvals is not None else None)
  notes = []
  finite = (btable.finite_bvecs_text(bvecs, source.num_volumes) if bvecs is not None
            else None)
  bvec_text = finite[0] if finite is not None else None
  if finite is not None:
    notes.append(f"{bvecs}: the b-vectors of b0 volume(s) {', '.join(map(str, finite[1]))} "
                 f"are NaN (no direction); written as 0 in {targets['bvec'].name}")
  grid = output_grid(lr_shape, source.affine, voxel_size=voxel_size, scale=scale, shape=shape,
                     max_output_voxels=settings.max_output_voxels)
  mask_array = None
  if mask is not None:
    mask_array = lr_mask(nifti.mask_on_grid(mask, lr_shape, source.affine), lr_shape,
                          os.fspath(mask))
  t1_volume = nifti.load_volume(t1, ndim=3) if t1 is not None else None
  # every voxel is read and checked before any output
  check_series((source.volume(i) for i in range(source.num_volumes)), source.path)
  prepare_adaptation(upsampler, lr_shape, grid.shape, settings.adapt)
  began = time.perf_counter()
  plan = plan_batch(upsampler.model, upsampler.params, upsampler.in_channels, lr_shape,
                    grid.shape, settings.max_memory,
                    min(settings.batch or default_batch(), source.num_volumes))
  start = time.perf_counter()  # "seconds": from the plan to the written files
  timing = {"plan": start - began}

  decided = {}
  if settings.adapting:
    began = time.perf_counter()
    upsampler, settings = adapt_on_series(
        upsampler, source.volume, source.num_volumes, table, source.affine, grid.shape,
        settings, mask=mask_array, record=decided, plan=plan, progress=progress)
    timing["adapt"] = time.perf_counter() - began
  volumes = upsample_volumes(
      source.volume, source.num_volumes, lr_shape, source.affine, grid.shape, upsampler,
      settings, bvals=table, t1=t1_volume, mask=mask_array, plan=plan, progress=progress,
      source=os.fspath(bvals or dwi), record=decided)
  if settings.uncertainty is None:
    volumes = ((volume, None) for volume in volumes)
  began = time.perf_counter()
  made = prefetch.ahead(_timed(volumes, timing, "volumes"))
  with contextlib.closing(made):  # on an error or Ctrl-C the computing thread stops too
    write_outputs(targets, source, grid, _timed(made, timing, "write_wait"),
                  bvals, bvecs, preview_title=f"{pathlib.Path(dwi).name} → {out.name}",
                  overwrite=overwrite, shown=shown_volumes(source.num_volumes, table),
                  report_sections=report_sections, bvec_text=bvec_text,
                  sidecar=lambda: {**sidecar_record(
                      upsampler, dwi, source, grid, settings, decided, time.perf_counter() - start,
                      {**timing, "written": time.perf_counter() - began}),
                                   **({"notes": notes} if notes else {}),
                                   **(sidecar_extra or {})})
  if save_adapted is not None:
    save_adapted_model(upsampler, save_adapted, settings.adapt, os.fspath(dwi),
                       kept=decided["adapt"]["kept"])
    targets["adapted"] = pathlib.Path(save_adapted)
  return UpsampleResult([os.fspath(p) for p in targets.values()], grid, source.num_volumes, plan,
                        time.perf_counter() - start, decided, timing, notes)


def _timed(items: Iterator[np.ndarray], timing: dict, stage: str) -> Iterator[np.ndarray]:
  """`items`, adding the seconds spent waiting for each to timing[stage]."""
  timing.setdefault(stage, 0.0)
  items = iter(items)
  while True:
    began = time.perf_counter()
    try:
      item = next(items)
    except StopIteration:
      timing[stage] += time.perf_counter() - began
      return
    timing[stage] += time.perf_counter() - began
    yield item
