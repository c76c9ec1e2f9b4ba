"""A per-voxel uncertainty for a super-resolved volume, in the output's units.

Each candidate measures what the input cannot pin down, smoothed over half an input voxel
along the upsampled axes (an error is a property of a neighbourhood, not of one voxel):
  * "psf": the spread (standard deviation) of the model's output made consistent with the
    input under each plausible PSF (`PLAUSIBLE_PSFS`: k-space truncation and three
    slice/blur profiles): where they disagree, the output depends on an acquisition detail
    the scan only hints at. Back-projections only.
  * "flip": half the difference between the output and the model's output for the input
    flipped along its first axis (flipped back, made consistent alike): detail that depends
    on the orientation the model saw is guessed, not read. One more pass of the model.
  * "detail": the magnitude of what the output holds above the input's band, the output
    minus its own degradation interpolated back: what no measurement constrains, which
    data consistency cannot check. One degradation and one interpolation.
  * "psf+detail": the sum of the two.
The map is the candidate times `CALIBRATION[method]`, which makes it the expected absolute
error on the real validation scans (fitted there); which method is the default was chosen
on those scans too (docs/uncertainty.md, `jaxsr.dmri.studies.uncertainty_study`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from jaxsr.dmri.degradation import psf as psf_lib
from jaxsr.dmri.degradation.degrade import back_project, degrade, tricubic_upsample

METHODS = ("psf", "flip", "detail", "psf+detail")
PLAUSIBLE_PSFS = ("kspace", "cubic", "block", "gaussian")
# Expected absolute error per unit of the candidate on the real validation scans (sum of
# |error| over the sum of the candidate inside the brain masks, over the cases):
# docs/uncertainty.md gives the commit and how it was measured.
CALIBRATION = {"psf": 3.462, "flip": 11.94, "detail": 1.731, "psf+detail": 1.154}
DEFAULT_METHOD = "psf+detail"


def check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"uncertainty method must be one of {METHODS}, got {method!r}")
  return method


def needs_flip(method: str) -> bool:
  return method == "flip"


def smoothed(volume: np.ndarray, lr_shape: Sequence[int]) -> np.ndarray:
  """`volume` (X, Y, Z) blurred by a Gaussian of σ half an input voxel along each upsampled
  axis (none along the others)."""
  sigma = [0.5 * n / m if n > m else 0.0 for n, m in zip(volume.shape, lr_shape)]
  return ndimage.gaussian_filter(np.asarray(volume, np.float32), sigma, mode="nearest")


def psf_spread(raw: np.ndarray, lr: np.ndarray, iterations: int) -> np.ndarray:
  """(X, Y, Z) standard deviation over `PLAUSIBLE_PSFS` of the raw model output `raw`
  back-projected onto `lr` (`iterations`, at least one) under each."""
  made = [back_project(raw, lr, max(1, iterations), psf=psf) for psf in PLAUSIBLE_PSFS]
  return np.std(np.stack(made), axis=0).astype(np.float32)


def flip_spread(output: np.ndarray, raw_flipped: np.ndarray, lr: np.ndarray, iterations: int,
                psf) -> np.ndarray:
  """(X, Y, Z) standard deviation of two outputs: `output` (consistent with `lr`) and the
  model's output for `lr` flipped along axis 0 (`raw_flipped`, already flipped back), made
  consistent the same way: half their absolute difference."""
  other = back_project(raw_flipped, lr, iterations, psf=psf)
  return (0.5 * np.abs(output - other)).astype(np.float32)


def unmeasured_detail(output: np.ndarray, lr: np.ndarray, psf) -> np.ndarray:
  """(X, Y, Z) |output − tricubic(degrade(output))|: the output above the input's band, by
  the PSF it was made consistent under (None: the training degradation)."""
  low = degrade(output, lr.shape) if psf is None else psf_lib.degrade(output, lr.shape, psf)
  return np.abs(output - np.asarray(tricubic_upsample(np.asarray(low, np.float32),
                                                      output.shape))).astype(np.float32)


def uncertainty_map(method: str, raw: np.ndarray, output: np.ndarray, lr: np.ndarray,
                    iterations: int, psf, raw_flipped: Callable[[], np.ndarray]) -> np.ndarray:
  """The calibrated (X, Y, Z) uncertainty of `output` (the model's `raw` output made
  consistent with `lr` under `psf`), in the units of `lr`; `raw_flipped()` runs the model on
  the flipped input where the method needs it."""
  check_method(method)
  if method == "psf":
    candidate = psf_spread(raw, lr, iterations)
  elif method == "flip":
    candidate = flip_spread(output, raw_flipped(), lr, iterations, psf)
  elif method == "detail":
    candidate = unmeasured_detail(output, lr, psf)
  else:
    candidate = psf_spread(raw, lr, iterations) + unmeasured_detail(output, lr, psf)
  return (CALIBRATION[method] * smoothed(candidate, lr.shape)).astype(np.float32)


def rank_correlation(uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray) -> float:
  """Spearman's rank correlation of the uncertainty and the absolute error inside `mask`."""
  from scipy import stats

  u, e = uncertainty[mask].ravel(), np.abs(error[mask]).ravel()
  if np.ptp(u) == 0 or np.ptp(e) == 0:
    return float("nan")
  return float(stats.spearmanr(u, e).statistic)


def deciles(uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray
            ) -> list[tuple[float, float]]:
  """[(mean uncertainty, mean absolute error)] over the ten deciles of the uncertainty inside
  `mask`, lowest first."""
  u, e = uncertainty[mask].ravel(), np.abs(error[mask]).ravel()
  order = np.argsort(u, kind="stable")
  return [(float(u[part].mean()), float(e[part].mean()))
          for part in np.array_split(order, 10) if len(part)]


def flipped(volume: np.ndarray, axes: Sequence[int] = (0,)) -> np.ndarray:
  """`volume` (x, y, z[, C]) flipped along `axes`, contiguous."""
  return np.ascontiguousarray(np.flip(volume, axis=tuple(axes)))
