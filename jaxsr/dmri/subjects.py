"""Subjects ready for training: HCP-layout folders -> normalised, co-registered arrays, cached.

A subject folder holds `data.nii.gz` (4D DWI), `bvals`, `bvecs` (FSL),
`nodif_brain_mask.nii.gz`, optionally `wm_mask.nii.gz`, and a T1 (see
`T1_CANDIDATES`). Both the real HCP layout (`ROOT/SUBJ/T1w/Diffusion/`, T1 in
`ROOT/SUBJ/T1w/`) and the flat one of the embedded dataset (`ROOT/SUBJ/`) are read.
Preprocessing (shell selection, division by the mean b0, T1 resampling onto the
DWI grid through the affines) runs once per subject; the results are cached as
.npy files and memory-mapped afterwards, so subjects need not fit in RAM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import uuid

import nibabel as nib
import nibabel.affines
import numpy as np

from jaxsr import anatomy, nifti
from jaxsr.dmri import btable, phantom

# T1 images tried in order, relative to the folder holding data.nii.gz: the embedded
# dataset's, then real HCP's (SUBJ/T1w/Diffusion/../T1w_acpc_dc_restore*.nii.gz).
T1_CANDIDATES = ("T1w.nii.gz", "../T1w_acpc_dc_restore_1.25.nii.gz",
                 "../T1w_acpc_dc_restore_brain.nii.gz", "../T1w_acpc_dc_restore.nii.gz")
CACHE_VERSION = 1  # bump when preprocessing changes


@dataclasses.dataclass(frozen=True)
class Subject:
  """One subject on its DWI grid.

  Attributes:
    name: subject id (its folder name).
    dwi: (X, Y, Z, K) float32 b-shell volumes divided by the mean b0, in [0, 1],
      0 outside the mask (may be a read-only memmap).
    t1: (X, Y, Z) float32 T1 resampled onto the DWI grid (cubic, through the affines),
      divided by its 99.5th percentile inside the mask and clipped to [0, 1].
    mask: (X, Y, Z) bool brain mask.
    affine: (4, 4) DWI voxel -> world mm.
    bvecs: (K, 3) unit gradient directions of the shell volumes.
    bval: mean b-value of the shell, s/mm².
    wm_mask: (X, Y, Z) bool white-matter mask, when the folder has `wm_mask.nii.gz`.
  """

  name: str
  dwi: np.ndarray
  t1: np.ndarray
  mask: np.ndarray
  affine: np.ndarray
  bvecs: np.ndarray
  bval: float
  wm_mask: np.ndarray | None = None

  @property
  def voxel_size(self) -> np.ndarray:
    """(3,) DWI voxel edge lengths in mm."""
    return nib.affines.voxel_sizes(self.affine)


def _dwi_folder(folder: pathlib.Path) -> pathlib.Path | None:
  for candidate in (folder, folder / "T1w" / "Diffusion"):
    if (candidate / "data.nii.gz").is_file():
      return candidate
  return None


def subject_name(folder: str | os.PathLike) -> str:
  """`SUBJ` for `.../SUBJ` and for HCP's `.../SUBJ/T1w/Diffusion`."""
  folder = pathlib.Path(folder).absolute()
  if folder.name == "Diffusion" and folder.parent.name == "T1w":
    return folder.parent.parent.name
  return folder.name


def find_subject_dirs(root: str | os.PathLike) -> list[pathlib.Path]:
  """The folders holding `data.nii.gz` under `root`, sorted by subject name.

  Accepts `root/SUBJ/data.nii.gz` and `root/SUBJ/T1w/Diffusion/data.nii.gz`; `root`
  may also be a single subject folder (either layout).
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise nifti.DataError(f"{root}: not a folder")
  single = _dwi_folder(root)
  if single is not None:
    return [single]
  folders = [f for f in map(_dwi_folder, sorted(p for p in root.iterdir() if p.is_dir()))
             if f is not None]
  if not folders:
    raise nifti.DataError(f"{root}: no subject folders (expected ROOT/SUBJ/data.nii.gz or "
                          "ROOT/SUBJ/T1w/Diffusion/data.nii.gz)")
  return sorted(folders, key=subject_name)


def _source_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  files = {n: folder / f for n, f in (("dwi", "data.nii.gz"), ("bvals", "bvals"),
                                      ("bvecs", "bvecs"), ("mask", "nodif_brain_mask.nii.gz"))}
  for name, path in files.items():
    if not path.is_file():
      raise nifti.DataError(f"{path}: file not found (needed for subject {subject_name(folder)})")
  t1 = [folder / c for c in T1_CANDIDATES if (folder / c).is_file()]
  if not t1:
    raise nifti.DataError(f"{folder}: no T1 image; tried {', '.join(T1_CANDIDATES)}")
  files["t1"] = pathlib.Path(os.path.normpath(t1[0]))
  if (folder / "wm_mask.nii.gz").is_file():
    files["wm_mask"] = folder / "wm_mask.nii.gz"
  return files


def _fingerprint(files: dict[str, pathlib.Path], params: dict) -> str:
  stats = {n: (str(p.absolute()), p.stat().st_size, p.stat().st_mtime_ns) for n, p in files.items()}
  text = json.dumps([CACHE_VERSION, stats, params], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_on_grid(path: pathlib.Path, dwi: nifti.Volume) -> np.ndarray:
  """A 3D volume that must share the DWI's grid (masks)."""
  volume = nifti.load_volume(path, ndim=3)
  if volume.data.shape != dwi.data.shape[:3] or not np.allclose(volume.affine, dwi.affine,
                                                                atol=1e-3):
    raise nifti.DataError(f"{path}: grid {volume.data.shape} does not match the DWI grid "
                          f"{dwi.data.shape[:3]} of {dwi.path}")
  return volume.data > 0.5


def _preprocess(files: dict[str, pathlib.Path], bval: float, bval_tol: float
                ) -> dict[str, np.ndarray]:
  dwi = nifti.load_volume(files["dwi"], ndim=4)
  bvals, bvecs = btable.load_bvals_bvecs(files["bvals"], files["bvecs"], dwi.data.shape[-1],
                                        dwi.path)
  shell = btable.shell_indices(bvals, bval, bval_tol, source=str(files["bvals"]))
  btable.b0_indices(bvals, source=str(files["bvals"]))  # no b0: fail naming the file
  mask = _load_on_grid(files["mask"], dwi)
  if not mask.any():
    raise nifti.DataError(f"{files['mask']}: empty brain mask")
  t1_volume = nifti.load_volume(files["t1"], ndim=3)
  t1 = nifti.resample_to_grid(t1_volume, mask.shape, dwi.affine, order=3, mask=mask)
  arrays = {
      "dwi": btable.normalise_by_mean_b0(dwi.data, bvals, mask, bval, bval_tol),
      "t1": anatomy.normalise_t1(t1, mask, f"{files['t1']}", "the brain mask"),
      "mask": mask,
      "affine": dwi.affine,
      "bvecs": bvecs[shell],
      "bval": np.mean(bvals[shell]),
  }
  if "wm_mask" in files:
    arrays["wm_mask"] = _load_on_grid(files["wm_mask"], dwi)
  return arrays


def load_hcp_subject(folder: str | os.PathLike, *, cache_dir: str | os.PathLike,
                     bval: float = 1000.0, bval_tol: float = 100.0) -> Subject:
  """Loads one subject folder, preprocessing it into `cache_dir` the first time.

  The cache entry `cache_dir/<name>-<fingerprint>/` is keyed on the source files'
  paths, sizes and modification times and on the parameters, so editing a source
  file triggers a fresh preprocessing. Entries are written atomically.

  Raises:
    DataError: naming the file, for any missing, malformed or inconsistent input.
  """
  folder = pathlib.Path(folder).expanduser().absolute()
  name = subject_name(folder)
  files = _source_files(folder)
  entry = pathlib.Path(cache_dir).expanduser() / f"{name}-{_fingerprint(files, [bval, bval_tol])}"
  if not entry.is_dir():
    arrays = _preprocess(files, bval, bval_tol)
    entry.parent.mkdir(parents=True, exist_ok=True)
    temp = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex}"
    temp.mkdir()
    try:
      for key, array in arrays.items():
        np.save(temp / f"{key}.npy", array)
      os.replace(temp, entry)
    except OSError:
      if not entry.is_dir():  # else a concurrent process cached the same subject
        raise
    finally:
      shutil.rmtree(temp, ignore_errors=True)
  mapped = lambda key: np.load(entry / f"{key}.npy", mmap_mode="r")
  return Subject(name=name, dwi=mapped("dwi"), t1=mapped("t1"), mask=mapped("mask"),
                 affine=np.load(entry / "affine.npy"), bvecs=np.load(entry / "bvecs.npy"),
                 bval=float(np.load(entry / "bval.npy")),
                 wm_mask=mapped("wm_mask") if (entry / "wm_mask.npy").is_file() else None)


def split_subjects(subjects: list, num_val: int, num_test: int) -> dict[str, list]:
  """Splits name-sorted subjects: the last `num_test` test, the `num_val` before them val."""
  num_train = len(subjects) - num_val - num_test
  if num_val < 0 or num_test < 0 or num_train < 1:
    raise nifti.DataError(f"{len(subjects)} subjects leave no training subjects after "
                          f"num_val={num_val} and num_test={num_test}")
  return {"train": subjects[:num_train], "val": subjects[num_train:num_train + num_val],
          "test": subjects[num_train + num_val:]}


def embedded_root(data_config) -> pathlib.Path:
  """Where the embedded dataset of these build parameters lives under `cache_dir`."""
  c = data_config
  name = (f"embedded-n{c.num_subjects}-{float(c.voxel_size_mm):g}mm-{c.num_directions}dir-"
          f"snr{float(c.snr):g}-seed{c.seed}-v{phantom.DATASET_VERSION}")
  return pathlib.Path(c.cache_dir).expanduser() / name


def load_subjects(data_config) -> dict[str, list[Subject]]:
  """Train/val/test subjects of `data_config` (an `ml_collections.ConfigDict` or similar).

  Fields: `source` ("embedded": built from the MNI template by
  `jaxsr.dmri.phantom`; "hcp": the subject folders under `root`), `root` (for
  "embedded", "" means a folder under `cache_dir` named after the build
  parameters), `cache_dir`, `num_subjects`, `voxel_size_mm`, `num_directions`,
  `snr`, `seed` (embedded build), `bval`, `bval_tol` (the shell) and `num_val`,
  `num_test`. Subjects are sorted by name; the LAST `num_test` are the test set,
  the `num_val` before them the validation set and the rest the training set, so
  the split is deterministic and test subjects never train.

  Raises:
    DataError: bad data, or a split that leaves no training subject.
  """
  c = data_config
  cache_dir = pathlib.Path(c.cache_dir).expanduser()
  if c.source == "embedded":
    folders = phantom.build_embedded_dataset(
        pathlib.Path(c.root).expanduser() if c.root else embedded_root(c),
        num_subjects=c.num_subjects, voxel_size_mm=c.voxel_size_mm,
        num_directions=c.num_directions, snr=c.snr, seed=c.seed)
  elif c.source == "hcp":
    if not c.root:
      raise nifti.DataError("data.root: empty; set it to the folder of HCP subject folders")
    folders = find_subject_dirs(c.root)
  else:
    raise ValueError(f"unknown data source {c.source!r}: use 'embedded' or 'hcp'")
  folders = sorted(folders, key=subject_name)
  splits = split_subjects(folders, c.num_val, c.num_test)
  return {split: [load_hcp_subject(f, cache_dir=cache_dir / "preprocessed", bval=c.bval,
                                   bval_tol=c.bval_tol) for f in fs]
          for split, fs in splits.items()}
