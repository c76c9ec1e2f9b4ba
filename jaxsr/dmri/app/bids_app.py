"""`jaxsr bids`: super-resolve the DWI of a BIDS dataset as a BIDS App (participant level).

For every DWI scan of the participants asked for, writes into the derivative
dataset OUT_DIR:

  OUT_DIR/dataset_description.json                    (DatasetType derivative, GeneratedBy)
  OUT_DIR/sub-<p>/[ses-<s>/]dwi/<stem>_res-<r>_desc-jaxsr_dwi.nii.gz, .bval, .bvec, .json
  OUT_DIR/sub-<p>/[ses-<s>/]dwi/<stem>_res-<r>_desc-jaxsrUncertainty_dwi.nii.gz, .json
                                         (each voxel's expected absolute error, signal units)
  OUT_DIR/sub-<p>.html                   (the participant's report: every scan, fMRIPrep's place)
  OUT_DIR/index.html                     (a link to each participant's report)

with `jaxsr.dmri.app.upsample_files` (the same model, memory plan and atomic writes as
`jaxsr upsample`). Every scan is found and checked (gradient tables, a T1w where
the model needs one, output names free unless overwriting) before anything is
written; each output is then complete or absent.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
from typing import Sequence

from jaxsr import files, nifti
from jaxsr.dmri.app.grid import output_grid
from jaxsr.dmri.app.model import Upsampler, load_upsampler
from jaxsr.dmri.app.settings import DEFAULT_MAX_OUTPUT_VOXELS
from jaxsr.dmri.app.uncertainty import DEFAULT_METHOD
from jaxsr.dmri.app.upsample_files import UpsampleResult, upsample_files
from jaxsr.dmri.data import bids
from jaxsr.errors import UpsampleError
from jaxsr.outputs import companion_path

ANALYSIS_LEVELS = ("participant",)  # one scan's output depends on that scan alone: no group level


def _derivative(out_dir: pathlib.Path, scan: bids.BidsScan, upsampler: Upsampler, voxel_size,
                scale, max_output_voxels: int) -> tuple[pathlib.Path, str]:
  """The output of one scan and its `res` label (the output voxel size)."""
  source = nifti.open_volume(scan.dwi, ndim=4)
  if upsampler.uses_t1 and scan.t1 is None:
    raise UpsampleError(f"{scan.dwi}: the model takes a T1 and sub-{scan.participant} has no "
                        "T1w image")
  grid = output_grid(source.shape[:3], source.affine, voxel_size=voxel_size, scale=scale,
                     max_output_voxels=max_output_voxels)
  label = bids.resolution_label(grid.voxel_size)
  return bids.derivative_path(out_dir, scan, label), label


def _check_free(image: pathlib.Path, overwrite: bool) -> None:
  spread = bids.uncertainty_path(image)
  for path in ((image, spread, companion_path(spread, ".json"))
               + tuple(companion_path(image, s) for s in (".bval", ".bvec", ".json"))):
    if path.exists() and not overwrite:
      raise UpsampleError(f"{path}: already exists (use --overwrite to replace it)")


def run_bids_app(bids_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 analysis_level: str = "participant", *,
                 participant_labels: Sequence[str] | None = None,
                 checkpoint: str | os.PathLike | Upsampler | None = None, voxel_size=None,
                 scale=None, overwrite: bool = False, progress: bool = True,
                 **upsample_options) -> list[UpsampleResult]:
  """Super-resolves every DWI scan of `participant_labels` (all when None) into `out_dir`.

  Args:
    bids_dir: the raw BIDS dataset.
    out_dir: the derivative dataset (created; not `bids_dir` itself).
    analysis_level: "participant".
    participant_labels: labels with or without `sub-`.
    checkpoint, voxel_size, scale, overwrite, progress, **upsample_options: as
      `upsample_files` (max_memory, max_output_voxels, back_projection, psf).

  Returns:
    One `UpsampleResult` per scan, in path order.

  Raises:
    DataError (not a BIDS dataset, unknown participant, a DWI without .bval/.bvec),
    UpsampleError (grid request, output exists, a T1 the model needs is missing),
    CheckpointError, WriteError: one line; nothing is written before all scans pass.
  """
  if analysis_level not in ANALYSIS_LEVELS:
    raise UpsampleError(f"analysis level {analysis_level!r}: jaxsr has only "
                        f"{', '.join(ANALYSIS_LEVELS)}")
  root = bids.check_dataset(bids_dir)
  out_dir = pathlib.Path(out_dir).expanduser().absolute()
  if out_dir == root:
    raise UpsampleError(f"{out_dir}: is the BIDS dataset itself; write derivatives elsewhere "
                        f"(e.g. {root / 'derivatives' / 'jaxsr'})")
  scans = bids.find_scans(root, participant_labels)
  upsampler = load_upsampler(checkpoint)
  max_output_voxels = upsample_options.get("max_output_voxels", DEFAULT_MAX_OUTPUT_VOXELS)
  targets = [_derivative(out_dir, scan, upsampler, voxel_size, scale, max_output_voxels)
             for scan in scans]
  for target, _ in targets:
    _check_free(target, overwrite)
  files.check_can_create(out_dir)

  description = bids.dataset_description(root, importlib.metadata.version("jaxsr"),
                                         upsampler.run_dir)
  description["DatasetLinks"] = {"raw": root.as_uri()}
  with files.write_errors(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
  files.write_json(out_dir / "dataset_description.json", description)
  results, sections = [], {}
  for scan, (target, label) in zip(scans, targets):
    with files.write_errors(target.parent):
      target.parent.mkdir(parents=True, exist_ok=True)
    spread = bids.uncertainty_path(target)
    resolution = (f"res-{label}: output voxel size in mm ('p' is the decimal point, 'x' "
                  "separates the axes)")
    results.append(upsample_files(
        upsampler, scan.dwi, target, t1=scan.t1 if upsampler.uses_t1 else None, bvals=scan.bval,
        bvecs=scan.bvec, voxel_size=voxel_size, scale=scale, overwrite=overwrite,
        progress=progress, uncertainty=spread,
        report_sections=sections.setdefault(scan.participant, []),
        sidecar_extra={"Sources": [f"bids:raw:{scan.relative}"], "Resolution": resolution},
        **upsample_options))
    files.write_json(companion_path(spread, ".json"), {
        "Description": "Per-voxel uncertainty of the super-resolved DWI: the expected "
                       "absolute error of each voxel, in the DWI's units "
                       "(jaxsr.dmri.app.uncertainty)",
        "Method": DEFAULT_METHOD,
        "Sources": [f"bids::{target.relative_to(out_dir).as_posix()}"],
        "Resolution": resolution})
  _write_reports(out_dir, root, sections)
  return results


def _write_reports(out_dir: pathlib.Path, root: pathlib.Path, sections: dict[str, list]) -> None:
  """OUT_DIR/sub-<label>.html per participant (their scans' sections) and OUT_DIR/index.html."""
  from jaxsr.dmri.app import report  # matplotlib and jinja2 on use: they slow start-up

  pages = []
  for participant, scans in sections.items():
    name = f"sub-{participant}"
    report.write_report(out_dir / f"{name}.html", f"{name} ({root.name})", scans)
    pages.append({"href": f"{name}.html", "name": name, "scans": [s["name"] for s in scans]})
  report.write_index(out_dir / "index.html", root.name, pages)
