"""FSL gradient tables (bvals, bvecs) and the b-shell selection and b0 normalisation of DWI.

b-values are in s/mm²; b-vectors are unit vectors in the DWI's voxel axes (FSL).
Every bad input raises `DataError` naming the file.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Callable

import numpy as np

from jaxsr.nifti import DataError

B0_THRESHOLD = 50.0  # s/mm²: volumes at or below this b-value count as b0


def _load_table(path: str, dwi_path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found (gradient table for {dwi_path})")
  try:
    return np.loadtxt(path, dtype=np.float64, ndmin=2)
  except ValueError as e:
    raise DataError(f"{path}: malformed gradient table ({e})") from e


def load_bvals_bvecs(bvals_path: str | os.PathLike, bvecs_path: str | os.PathLike,
                     num_volumes: int, dwi_path: str | os.PathLike
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Reads FSL `bvals` (one row or column) and `bvecs` (3 × V, or V × 3).

  Args:
    bvals_path, bvecs_path: the text files.
    num_volumes: V, the number of volumes of the DWI they describe.
    dwi_path: that DWI, for error messages.

  Returns:
    bvals (V,) in s/mm² and bvecs (V, 3): unit vectors for diffusion-weighted
    volumes, zero for b0 volumes (whose bvecs may be zero or NaN in the file).
  """
  bvals_path, bvecs_path, dwi_path = map(os.fspath, (bvals_path, bvecs_path, dwi_path))
  bvals = _load_table(bvals_path, dwi_path)
  if min(bvals.shape) != 1:
    raise DataError(f"{bvals_path}: expected one row of b-values, got a {bvals.shape} table")
  bvals = bvals.ravel()
  if bvals.size != num_volumes:
    raise DataError(f"{bvals_path}: {bvals.size} b-values but {dwi_path} has {num_volumes} volumes")
  if not np.all(np.isfinite(bvals)) or np.any(bvals < 0):
    raise DataError(f"{bvals_path}: b-values must be finite and non-negative")
  bvecs = _load_table(bvecs_path, dwi_path)
  if bvecs.shape == (3, num_volumes):
    bvecs = bvecs.T
  elif bvecs.shape != (num_volumes, 3):
    raise DataError(f"{bvecs_path}: expected 3 x {num_volumes} b-vectors for {dwi_path}, "
                    f"got a {bvecs.shape[0]} x {bvecs.shape[1]} table")
  is_b0 = bvals <= B0_THRESHOLD
  bvecs = np.where(is_b0[:, None], np.nan_to_num(bvecs), bvecs)
  norms = np.linalg.norm(bvecs, axis=1)
  bad = ~is_b0 & ~(norms > 1e-6)  # also catches NaN
  if np.any(bad):
    raise DataError(f"{bvecs_path}: {np.count_nonzero(bad)} diffusion-weighted volumes have a "
                    "zero or non-finite b-vector")
  bvecs = np.divide(bvecs, norms[:, None], out=np.zeros_like(bvecs), where=norms[:, None] > 1e-6)
  return bvals, bvecs


def finite_bvecs_text(bvecs_path: str | os.PathLike, num_volumes: int
                      ) -> tuple[str, list[int]] | None:
  """None for a b-vector file without NaN/inf; else (the file's text with those entries
  replaced by 0, every other character kept, the volumes whose entries they were).
  `load_bvals_bvecs` accepts them only for b0 volumes (no direction), but tools reading the
  file later may not. The table is read as there (comments allowed; 3 × V unless V × 3)."""
  table = np.loadtxt(os.fspath(bvecs_path), dtype=np.float64, ndmin=2)
  bad = ~np.isfinite(table)
  if not bad.any():
    return None
  by_volume = bad.T if table.shape == (3, num_volumes) else bad
  volumes = [int(i) for i in np.flatnonzero(by_volume.any(axis=1))]
  lines = pathlib.Path(bvecs_path).read_text().splitlines()
  finite = [re.sub(r"(?i)(?<![\w.])[-+]?(nan|inf(inity)?)(?![\w.])", "0", line)
            for line in lines]
  return "\n".join(finite) + "\n", volumes


def shell_indices(bvals: np.ndarray, bval: float = 1000.0, tol: float = 100.0,
                  source: str = "bvals") -> np.ndarray:
  """Indices of the volumes with |b - bval| <= tol; `source` names the b-values in errors."""
  bvals = np.asarray(bvals)
  indices = np.flatnonzero(np.abs(bvals - bval) <= tol)
  if indices.size == 0:
    raise DataError(f"{source}: no volumes with b = {bval:g} ± {tol:g} s/mm² "
                    f"(b-values present: {np.unique(np.round(bvals)).tolist()})")
  return indices


def b0_indices(bvals: np.ndarray, threshold: float = B0_THRESHOLD,
               source: str = "bvals", required: bool = True) -> np.ndarray:
  """Indices of the b0 volumes (b <= threshold s/mm²): DataError where there is none and
  `required` (`source` names the b-values in it), else possibly empty."""
  indices = np.flatnonzero(np.asarray(bvals) <= threshold)
  if indices.size == 0 and required:
    raise DataError(f"{source}: no b0 volume (b <= {threshold:g} s/mm²)")
  return indices


def mean_b0(read_volume: Callable[[int], np.ndarray], bvals: np.ndarray,
            source: str = "the b-values") -> np.ndarray:
  """(X, Y, Z) float32 mean of the b0 volumes, read one at a time by `read_volume(index)`."""
  indices = b0_indices(bvals, source=source)
  total = None
  for index in indices:
    volume = np.asarray(read_volume(int(index)), dtype=np.float64)
    total = volume if total is None else total + volume
  return (total / len(indices)).astype(np.float32)


def divide_by_b0(volume: np.ndarray, mean_b0_volume: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """(X, Y, Z) float32 `volume / mean_b0_volume` where `valid`, else 0, clipped to [0, 1]."""
  out = np.zeros(volume.shape, np.float32)
  np.divide(np.asarray(volume, np.float32), mean_b0_volume, out=out, where=valid)
  return np.clip(out, 0.0, 1.0, out=out)


def normalise_by_mean_b0(dwi: np.ndarray, bvals: np.ndarray, mask: np.ndarray,
                         bval: float = 1000.0, tol: float = 100.0) -> np.ndarray:
  """The b-shell volumes divided by the mean b0, as in CSR-dMRI (in memory; subjects on disk
  are normalised volume by volume with `mean_b0` and `divide_by_b0`).

  Args:
    dwi: (X, Y, Z, V) signal.
    bvals: (V,) s/mm².
    mask: (X, Y, Z) brain mask (bool or 0/1).
    bval, tol: the shell, |b - bval| <= tol.

  Returns:
    (X, Y, Z, K) float32 in [0, 1]; 0 outside the mask and where the mean b0 is not positive.
  """
  b0 = mean_b0(lambda index: dwi[..., index], bvals)
  valid = (np.asarray(mask) > 0) & (b0 > 0)
  return np.stack([divide_by_b0(dwi[..., index], b0, valid)
                   for index in shell_indices(bvals, bval, tol)], axis=-1)
