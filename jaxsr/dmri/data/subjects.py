"""Subjects ready for training: DWI folders -> normalised, co-registered arrays, cached.

Sources: HCP-layout folders (`load_hcp_subject`) and BIDS datasets
(`jaxsr.dmri.data.bids`), each described by a `SubjectFiles`. An HCP subject folder
holds `data.nii.gz` (or `data.nii`; 4D DWI), `bvals`, `bvecs` (FSL),
`nodif_brain_mask.nii.gz`, optionally `wm_mask.nii.gz`, and a T1 (see
`T1_CANDIDATES`). Both the real HCP layout (`ROOT/SUBJ/T1w/Diffusion/`, T1 in
`ROOT/SUBJ/T1w/`) and the flat one of the embedded dataset (`ROOT/SUBJ/`) are read.

Preprocessing (shell selection, division by the mean b0, T1 resampling onto the
DWI grid through the affines) runs once per subject and streams: the DWI is read
one 3D volume at a time (the mean b0 first, then each shell volume normalised and
appended to the cache file), so a subject need not fit in memory (an HCP-size
subject's peak is in docs/scaling.md). The cache stores the shell volume-major,
(K, X, Y, Z), so that a training patch of one volume reads only that volume's
pages; it is memory-mapped afterwards and shown as (X, Y, Z, K).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import pathlib
import shutil
import uuid

import nibabel as nib
import nibabel.affines
import numpy as np
from tqdm import tqdm

from jaxsr import anatomy, nifti
from jaxsr.dmri.data import bids, btable, phantom

DWI_NAMES = ("data.nii.gz", "data.nii")  # the 4D DWI of an HCP-layout folder
# T1 images tried in order, relative to the folder holding the DWI: the embedded
# dataset's, then real HCP's (SUBJ/T1w/Diffusion/../T1w_acpc_dc_restore*.nii.gz).
T1_CANDIDATES = ("T1w.nii.gz", "../T1w_acpc_dc_restore_1.25.nii.gz",
                 "../T1w_acpc_dc_restore_brain.nii.gz", "../T1w_acpc_dc_restore.nii.gz")
CACHE_VERSION = 2  # bump when preprocessing or the cache layout changes


@dataclasses.dataclass(frozen=True)
class Subject:
  """One subject on its DWI grid.

  Attributes:
    name: subject id (its folder name; BIDS: `sub-<label>[_ses-<label>]...`).
    dwi: (X, Y, Z, K) float32 b-shell volumes divided by the mean b0, in [0, 1],
      0 outside the mask (a read-only memmap whose volumes are contiguous).
    t1: (X, Y, Z) float32 T1 resampled onto the DWI grid (cubic, through the affines),
      divided by its 99.5th percentile inside the mask and clipped to [0, 1].
    mask: (X, Y, Z) bool brain mask.
    affine: (4, 4) DWI voxel -> world mm.
    bvecs: (K, 3) unit gradient directions of the shell volumes.
    bval: mean b-value of the shell, s/mm².
    wm_mask: (X, Y, Z) bool white-matter mask, when the source has one.
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


@dataclasses.dataclass(frozen=True)
class SubjectFiles:
  """Where one subject's inputs are.

  Attributes:
    name: the subject's id in caches and reports.
    participant: the unit of the train/val/test split (a participant's sessions stay together).
    dwi, bvals, bvecs: the 4D DWI (NIfTI) and its FSL gradient table.
    t1: a T1-weighted NIfTI, aligned with the DWI in world coordinates (affines).
    mask: a brain mask on the DWI grid; None: computed from the mean b0 (`b0_brain_mask`).
    wm_mask: a white-matter mask on the DWI grid, if any.
  """

  name: str
  participant: str
  dwi: pathlib.Path
  bvals: pathlib.Path
  bvecs: pathlib.Path
  t1: pathlib.Path
  mask: pathlib.Path | None = None
  wm_mask: pathlib.Path | None = None

  def paths(self) -> dict[str, pathlib.Path]:
    """{field: path} of the files there are."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), pathlib.Path)}


def _dwi_file(folder: pathlib.Path) -> pathlib.Path | None:
  return next((folder / n for n in DWI_NAMES if (folder / n).is_file()), None)


def _dwi_folder(folder: pathlib.Path) -> pathlib.Path | None:
  for candidate in (folder, folder / "T1w" / "Diffusion"):
    if _dwi_file(candidate) is not None:
      return candidate
  return None


def subject_name(folder: str | os.PathLike) -> str:
  """`SUBJ` for `.../SUBJ` and for HCP's `.../SUBJ/T1w/Diffusion`."""
  folder = pathlib.Path(folder).absolute()
  if folder.name == "Diffusion" and folder.parent.name == "T1w":
    return folder.parent.parent.name
  return folder.name


def find_subject_dirs(root: str | os.PathLike) -> list[pathlib.Path]:
  """The folders holding `data.nii.gz` (or `data.nii`) under `root`, sorted by subject name.

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


def hcp_files(folder: str | os.PathLike) -> SubjectFiles:
  """The inputs of one HCP-layout subject folder (the one holding the DWI).

  Raises:
    DataError: naming the first missing file.
  """
  folder = pathlib.Path(folder).expanduser().absolute()
  name = subject_name(folder)
  dwi = _dwi_file(folder) or folder / DWI_NAMES[0]
  required = {"dwi": dwi, "bvals": folder / "bvals", "bvecs": folder / "bvecs",
              "mask": folder / "nodif_brain_mask.nii.gz"}
  for path in required.values():
    if not path.is_file():
      raise nifti.DataError(f"{path}: file not found (needed for subject {name})")
  t1 = [folder / c for c in T1_CANDIDATES if (folder / c).is_file()]
  if not t1:
    raise nifti.DataError(f"{folder}: no T1 image; tried {', '.join(T1_CANDIDATES)}")
  wm_mask = folder / "wm_mask.nii.gz"
  return SubjectFiles(name=name, participant=name, t1=pathlib.Path(os.path.normpath(t1[0])),
                      wm_mask=wm_mask if wm_mask.is_file() else None, **required)


def _fingerprint(files: SubjectFiles, params: list) -> str:
  stats = {n: (str(p.absolute()), p.stat().st_size, p.stat().st_mtime_ns)
           for n, p in files.paths().items()}
  text = json.dumps([CACHE_VERSION, stats, params], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _mask_on_grid(path: pathlib.Path, dwi: nifti.LazyVolume) -> np.ndarray:
  """A 3D mask that must share the DWI's grid."""
  volume = nifti.load_volume(path, ndim=3)
  if volume.data.shape != dwi.shape[:3] or not np.allclose(volume.affine, dwi.affine, atol=1e-3):
    raise nifti.DataError(f"{path}: grid {volume.data.shape} does not match the DWI grid "
                          f"{dwi.shape[:3]} of {dwi.path}")
  return volume.data > 0.5


def b0_brain_mask(mean_b0: np.ndarray) -> np.ndarray:
  """(X, Y, Z) bool brain mask of a mean b0 (dipy's median_otsu), for sources without a mask."""
  from dipy.segment.mask import median_otsu  # on use: it slows every command's start-up

  _, mask = median_otsu(np.asarray(mean_b0, np.float32), median_radius=2, numpass=2)
  return mask


def _write_volume_major(path: pathlib.Path, shape: tuple[int, ...], volumes) -> None:
  """Writes float32 (X, Y, Z) volumes as one (K, X, Y, Z) .npy file, one volume at a time
  (plain writes, not a memory map: written pages do not count against the process)."""
  with open(path, "wb") as f:
    np.lib.format.write_array_header_2_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
            "shape": tuple(shape)})
    for volume in volumes:
      np.ascontiguousarray(volume, dtype="<f4").tofile(f)


def _prepare(files: SubjectFiles, bval: float, bval_tol: float, out: pathlib.Path,
             progress: bool) -> None:
  """Preprocesses one subject into the folder `out`, streaming the DWI volume by volume."""
  dwi = nifti.open_volume(files.dwi, ndim=4)
  bvals, bvecs = btable.load_bvals_bvecs(files.bvals, files.bvecs, dwi.num_volumes, dwi.path)
  shell = btable.shell_indices(bvals, bval, bval_tol, source=str(files.bvals))
  mean_b0 = btable.mean_b0(dwi.volume, bvals, source=str(files.bvals))
  mask = _mask_on_grid(files.mask, dwi) if files.mask else b0_brain_mask(mean_b0)
  if not mask.any():
    raise nifti.DataError(f"{files.mask or files.dwi}: empty brain mask")
  t1_volume = nifti.load_volume(files.t1, ndim=3)
  t1 = nifti.resample_to_grid(t1_volume, mask.shape, dwi.affine, order=3, mask=mask)
  np.save(out / "t1.npy", anatomy.normalise_t1(t1, mask, f"{files.t1}", "the brain mask"))
  np.save(out / "mask.npy", mask)
  np.save(out / "affine.npy", dwi.affine)
  np.save(out / "bvecs.npy", bvecs[shell])
  np.save(out / "bval.npy", np.mean(bvals[shell]))
  if files.wm_mask:
    np.save(out / "wm_mask.npy", _mask_on_grid(files.wm_mask, dwi))
  valid = mask & (mean_b0 > 0)
  volumes = tqdm(shell, desc=f"preparing {files.name}", unit="volume", disable=not progress,
                 dynamic_ncols=True, leave=False)
  _write_volume_major(out / "dwi.npy", (len(shell),) + mask.shape,
                      (btable.divide_by_b0(dwi.volume(int(i)), mean_b0, valid) for i in volumes))


def _read_only_map(path: pathlib.Path, random_access: bool = False) -> np.ndarray:
  array = np.load(path, mmap_mode="r")
  if random_access and hasattr(mmap, "MADV_RANDOM"):
    # Patches touch scattered pages: without this advice each page fault also reads ahead
    # neighbouring pages that the patch does not use (measured in docs/scaling.md).
    array._mmap.madvise(mmap.MADV_RANDOM)
  return array


def load_subject(files: SubjectFiles, *, cache_dir: str | os.PathLike, bval: float = 1000.0,
                 bval_tol: float = 100.0, progress: bool = False) -> Subject:
  """Loads one subject, preprocessing it into `cache_dir` the first time.

  The cache entry `cache_dir/<name>-<fingerprint>/` is keyed on the source files'
  paths, sizes and modification times and on the parameters, so editing a source
  file triggers a fresh preprocessing. Entries are written atomically.

  Raises:
    DataError: naming the file, for any missing, malformed or inconsistent input.
  """
  fingerprint = _fingerprint(files, [bval, bval_tol])
  entry = pathlib.Path(cache_dir).expanduser() / f"{files.name}-{fingerprint}"
  if not entry.is_dir():
    entry.parent.mkdir(parents=True, exist_ok=True)
    temp = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex}"
    temp.mkdir()
    try:
      _prepare(files, bval, bval_tol, temp, progress)
      os.replace(temp, entry)
    except OSError:
      if not entry.is_dir():  # else a concurrent process cached the same subject
        raise
    finally:
      shutil.rmtree(temp, ignore_errors=True)
  wm_mask = entry / "wm_mask.npy"
  return Subject(name=files.name, dwi=np.moveaxis(_read_only_map(entry / "dwi.npy", True), 0, -1),
                 t1=_read_only_map(entry / "t1.npy", True), mask=_read_only_map(entry / "mask.npy"),
                 affine=np.load(entry / "affine.npy"), bvecs=np.load(entry / "bvecs.npy"),
                 bval=float(np.load(entry / "bval.npy")),
                 wm_mask=_read_only_map(wm_mask) if wm_mask.is_file() else None)


def load_hcp_subject(folder: str | os.PathLike, *, cache_dir: str | os.PathLike,
                     bval: float = 1000.0, bval_tol: float = 100.0,
                     progress: bool = False) -> Subject:
  """`load_subject` of an HCP-layout folder (`hcp_files`)."""
  return load_subject(hcp_files(folder), cache_dir=cache_dir, bval=bval, bval_tol=bval_tol,
                      progress=progress)


def split_subjects(subjects: list, num_val: int, num_test: int) -> dict[str, list]:
  """Splits name-sorted subjects: the last `num_test` test, the `num_val` before them val."""
  num_train = len(subjects) - num_val - num_test
  if num_val < 0 or num_test < 0 or num_train < 1:
    raise nifti.DataError(f"{len(subjects)} subjects leave no training subjects after "
                          f"num_val={num_val} and num_test={num_test}")
  return {"train": subjects[:num_train], "val": subjects[num_train:num_train + num_val],
          "test": subjects[num_train + num_val:]}


def split_by_participant(sources: list[SubjectFiles], num_val: int, num_test: int
                         ) -> dict[str, list[SubjectFiles]]:
  """`split_subjects` over the sorted participants; each participant's sessions follow it."""
  participants = split_subjects(sorted({s.participant for s in sources}), num_val, num_test)
  return {split: [s for s in sources if s.participant in set(labels)]
          for split, labels in participants.items()}


def embedded_root(data_config) -> pathlib.Path:
  """Where the embedded dataset of these build parameters lives under `cache_dir`."""
  c = data_config
  name = (f"embedded-n{c.num_subjects}-{float(c.voxel_size_mm):g}mm-{c.num_directions}dir-"
          f"snr{float(c.snr):g}-seed{c.seed}-v{phantom.DATASET_VERSION}")
  return pathlib.Path(c.cache_dir).expanduser() / name


def subject_sources(data_config) -> list[SubjectFiles]:
  """The inputs of every subject of `data_config` (see `load_subjects`), sorted by name."""
  c = data_config
  if c.source == "embedded":
    folders = phantom.build_embedded_dataset(
        pathlib.Path(c.root).expanduser() if c.root else embedded_root(c),
        num_subjects=c.num_subjects, voxel_size_mm=c.voxel_size_mm,
        num_directions=c.num_directions, snr=c.snr, seed=c.seed)
    sources = [hcp_files(f) for f in folders]
  elif c.source == "hcp":
    if not c.root:
      raise nifti.DataError("data.root: empty; set it to the folder of HCP subject folders")
    sources = [hcp_files(f) for f in find_subject_dirs(c.root)]
  elif c.source == "bids":
    if not c.root:
      raise nifti.DataError("data.root: empty; set it to the BIDS dataset's folder")
    sources = [SubjectFiles(name=scan.stem, participant=scan.participant, dwi=scan.dwi,
                            bvals=scan.bval, bvecs=scan.bvec, t1=scan.t1)
               for scan in bids.find_scans(c.root, require_t1=True)]
  else:
    raise ValueError(f"unknown data source {c.source!r}: use 'embedded', 'hcp' or 'bids'")
  return sorted(sources, key=lambda s: s.name)


def load_subjects(data_config) -> dict[str, list[Subject]]:
  """Train/val/test subjects of `data_config` (an `ml_collections.ConfigDict` or similar).

  Fields: `source` ("embedded": built from the MNI template by
  `jaxsr.dmri.data.phantom`; "hcp": the subject folders under `root`; "bids": every
  DWI of the BIDS dataset at `root`, with its participant's T1w), `root` (for
  "embedded", "" means a folder under `cache_dir` named after the build
  parameters), `cache_dir`, `num_subjects`, `voxel_size_mm`, `num_directions`,
  `snr`, `seed` (embedded build), `bval`, `bval_tol` (the shell) and `num_val`,
  `num_test`. The split is over participants (HCP and embedded: subject folders;
  BIDS: participant labels, so a participant's sessions stay in one split),
  sorted: the LAST `num_test` are the test set, the `num_val` before them the
  validation set and the rest the training set, so the split is deterministic and
  test participants never train.

  Raises:
    DataError: bad data, or a split that leaves no training subject.
  """
  c = data_config
  splits = split_by_participant(subject_sources(c), c.num_val, c.num_test)
  cache_dir = pathlib.Path(c.cache_dir).expanduser() / "preprocessed"
  return {split: [load_subject(s, cache_dir=cache_dir, bval=c.bval, bval_tol=c.bval_tol,
                               progress=True) for s in sources]
          for split, sources in splits.items()}
