"""BIDS datasets: the DWI scans of a raw dataset, and the names of jaxsr's derivatives.

A raw BIDS dataset holds `dataset_description.json` and, per participant (and
session), `sub-<label>/[ses-<label>/]dwi/*_dwi.nii[.gz]` with `.bval`, `.bvec`
and `.json` beside it, and `anat/*_T1w.nii[.gz]`. The dataset is indexed by
ancpbids (a maintained BIDS reader with no dependencies of its own; pybids would
add eleven packages here, SQLAlchemy and pandas-based formula tools among them, for the
same query). Each DWI file is one
scan; its T1w is the participant's in the same session, else any of the
participant's (the first by name). Derivatives follow BIDS' derivative naming:
`sub-01/dwi/sub-01_res-<label>_desc-jaxsr_dwi.nii.gz`, where the `res` label is the
output voxel size with `p` for the decimal point (`1p25`, or `1p25x1p25x2` per axis).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterable, Sequence

from jaxsr.nifti import DataError

DWI_EXTENSIONS = (".nii.gz", ".nii")
BIDS_VERSION = "1.10.0"  # of the derivatives' dataset_description.json


@dataclasses.dataclass(frozen=True)
class BidsScan:
  """One DWI file of a BIDS dataset and the files that go with it.

  Attributes:
    participant: the participant label (without `sub-`).
    session: the session label (without `ses-`), or None.
    dwi, bval, bvec: the 4D DWI and its FSL gradient table.
    t1: the participant's T1w (same session first), or None when there is none.
    relative: the DWI's path relative to the dataset root (POSIX).
  """

  participant: str
  session: str | None
  dwi: pathlib.Path
  bval: pathlib.Path
  bvec: pathlib.Path
  t1: pathlib.Path | None
  relative: str

  @property
  def stem(self) -> str:
    """The DWI's file name without `_dwi.nii[.gz]`: `sub-01[_ses-pre][_acq-..][_run-..]`."""
    name = self.dwi.name
    for extension in DWI_EXTENSIONS:
      if name.endswith("_dwi" + extension):
        return name[:-len("_dwi" + extension)]
    raise DataError(f"{self.dwi}: not a BIDS DWI file name (*_dwi.nii[.gz])")


def _companion(dwi: pathlib.Path, extension: str) -> pathlib.Path:
  name = dwi.name
  for dwi_extension in DWI_EXTENSIONS:
    if name.endswith(dwi_extension):
      return dwi.with_name(name[:-len(dwi_extension)] + extension)
  return dwi.with_name(name + extension)


def check_dataset(root: str | os.PathLike) -> pathlib.Path:
  """The absolute dataset folder, or DataError when it is not a BIDS dataset."""
  root = pathlib.Path(root).expanduser().absolute()
  if not root.is_dir():
    raise DataError(f"{root}: not a folder")
  if not (root / "dataset_description.json").is_file():
    raise DataError(f"{root}: not a BIDS dataset (no dataset_description.json)")
  return root


def _label(text: str) -> str:
  return text[len("sub-"):] if text.startswith("sub-") else text


def _is_raw(path: pathlib.Path, root: pathlib.Path) -> bool:
  parts = path.relative_to(root).parts
  return bool(parts) and parts[0].startswith("sub-")  # not derivatives/, sourcedata/, code/


def find_scans(root: str | os.PathLike, participant_labels: Sequence[str] | None = None,
               *, require_t1: bool = False) -> list[BidsScan]:
  """Every DWI scan of the participants asked for (all when None), sorted by path.

  Args:
    root: the BIDS dataset folder.
    participant_labels: labels with or without `sub-`.
    require_t1: a scan whose participant has no T1w is an error (training needs one).

  Raises:
    DataError: not a BIDS dataset, a label that is not in it, a participant without a
      DWI, a DWI without its .bval/.bvec (or without a T1w when required): one line
      naming what is missing.
  """
  root = check_dataset(root)
  import ancpbids  # imported here: only BIDS commands pay for it
  layout = ancpbids.BIDSLayout(os.fspath(root))
  available = sorted(layout.get_subjects())
  if participant_labels:
    wanted = [_label(label) for label in participant_labels]
    missing = [label for label in wanted if label not in available]
    if missing:
      raise DataError(f"{root}: no participant {', '.join('sub-' + m for m in missing)} "
                      f"(the dataset has {', '.join('sub-' + a for a in available) or 'none'})")
  else:
    wanted = available
  scans = []
  for participant in wanted:
    dwis = _files(layout, root, subject=participant, suffix="dwi")
    if not dwis:
      raise DataError(f"{root / ('sub-' + participant)}: no DWI (expected "
                      f"[ses-*/]dwi/sub-{participant}_*dwi.nii.gz)")
    for dwi in dwis:
      scans.append(_scan(layout, root, participant, dwi, require_t1))
  return sorted(scans, key=lambda scan: scan.relative)


def _files(layout, root: pathlib.Path, **query) -> list[pathlib.Path]:
  paths = layout.get(return_type="filename", extension=list(DWI_EXTENSIONS), **query)
  return sorted(p for p in map(pathlib.Path, paths) if _is_raw(p, root))


def _scan(layout, root: pathlib.Path, participant: str, dwi: pathlib.Path,
          require_t1: bool) -> BidsScan:
  session = next((part[len("ses-"):] for part in dwi.relative_to(root).parts
                  if part.startswith("ses-")), None)
  bval, bvec = _companion(dwi, ".bval"), _companion(dwi, ".bvec")
  for path in (bval, bvec):
    if not path.is_file():
      raise DataError(f"{dwi}: no gradient table ({path.name} not found beside it): BIDS "
                      "requires a _dwi image's .bval and .bvec; a b0 or structural volume "
                      "alone is not a BIDS DWI: add its table (b-value 0, vector 0 0 0), or "
                      "run `jaxsr upsample --input FILE` on it")
  t1s = _files(layout, root, subject=participant, session=session, suffix="T1w") if session else []
  t1s = t1s or _files(layout, root, subject=participant, suffix="T1w")
  if require_t1 and not t1s:
    raise DataError(f"{dwi}: no T1w image for sub-{participant} (expected "
                    f"sub-{participant}/[ses-*/]anat/*_T1w.nii.gz)")
  return BidsScan(participant=participant, session=session, dwi=dwi, bval=bval, bvec=bvec,
                  t1=t1s[0] if t1s else None, relative=dwi.relative_to(root).as_posix())


def resolution_label(voxel_size_mm: Iterable[float]) -> str:
  """The BIDS `res` label of a voxel size: 1.25 -> "1p25"; (1.25, 1.25, 2) -> "1p25x1p25x2"."""
  sizes = [f"{float(v):.3f}".rstrip("0").rstrip(".").replace(".", "p") for v in voxel_size_mm]
  return sizes[0] if len(set(sizes)) == 1 else "x".join(sizes)


def derivative_path(out_dir: str | os.PathLike, scan: BidsScan, res_label: str) -> pathlib.Path:
  """`OUT/sub-<p>/[ses-<s>/]dwi/<stem>_res-<label>_desc-jaxsr_dwi.nii.gz`."""
  folder = pathlib.Path(out_dir) / f"sub-{scan.participant}"
  if scan.session is not None:
    folder = folder / f"ses-{scan.session}"
  return folder / "dwi" / f"{scan.stem}_res-{res_label}_desc-jaxsr_dwi.nii.gz"


def uncertainty_path(derivative: pathlib.Path) -> pathlib.Path:
  """The uncertainty map beside a derivative: desc-jaxsr -> desc-jaxsrUncertainty."""
  return derivative.with_name(derivative.name.replace("_desc-jaxsr_", "_desc-jaxsrUncertainty_"))


def dataset_description(source_root: pathlib.Path, version: str, model: str) -> dict:
  """The derivative dataset's `dataset_description.json`."""
  return {
      "Name": "jaxsr super-resolved DWI",
      "BIDSVersion": BIDS_VERSION,
      "DatasetType": "derivative",
      "GeneratedBy": [{"Name": "jaxsr", "Version": version,
                       "Description": f"arbitrary-scale super-resolution with the model {model}"}],
      "SourceDatasets": [{"URL": source_root.as_uri()}],
  }
