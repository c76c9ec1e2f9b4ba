"""Checks of a user's input before any work: magnitude data, a series in one unit, a mask
that fits the grid.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from jaxsr import nifti


# A volume this many times brighter than the series' median is mis-scaled: a b0 among b = 3000
# volumes is about 10 times their median; a unit mix-up (0..1 beside 0..4000) thousands.
SCALING_RATIO = 100.0


def series_level(volume: np.ndarray) -> float:
  """A volume's brightness for comparing the volumes of a series: its 99th percentile."""
  return float(np.percentile(volume, 99))


def check_series_scaling(levels: Sequence[float], source: str) -> None:
  """DataError naming the first volume of a series whose `series_level` is over
  `SCALING_RATIO` times the series' median, or under 1/1000 of it (0: a blank volume, kept).

  A series is stored in one unit and diffusion weighting attenuates by less than this (the
  noise floor stays), so a volume so much brighter or darker than the others was scaled
  differently (stacked from another file, another unit): its output would be wrong too.
  """
  levels = np.asarray(levels, np.float64)
  median = float(np.median(levels))
  if len(levels) < 2 or not median > 0:
    return
  for index, level in enumerate(levels):
    ratio = level / median
    if ratio > SCALING_RATIO or 0 < ratio < 1e-3:
      raise nifti.DataError(
          f"{source}: volume {index} is scaled unlike the others (its 99th percentile "
          f"{level:g} is {ratio:.3g}× the series' median {median:g}); give a series "
          "stored in one unit")


def check_series(volumes: Iterable[np.ndarray], source: str) -> None:
  """`check_magnitude` and `check_series_scaling` of a series' volumes, read once each."""
  peaks, levels = [], []
  for volume in volumes:
    peaks.append(float(np.max(volume)))
    levels.append(series_level(volume))
  check_magnitude(max(peaks), source)
  check_series_scaling(levels, source)


def check_magnitude(peak: float, source: str) -> None:
  """DataError if an input's largest voxel is not positive: jaxsr super-resolves magnitude
  images (negative voxels are clipped to 0, so a signed or phase image would come out blank)."""
  if not peak > 0:
    raise nifti.DataError(f"{source}: no voxel is positive (largest {peak:g}); jaxsr "
                          "super-resolves magnitude images, not phase or signed ones")


def lr_mask(mask: np.ndarray | None, lr_shape: Sequence[int], source: str) -> np.ndarray | None:
  if mask is None:
    return None
  mask = np.asarray(mask) > 0.5
  if mask.shape != tuple(lr_shape):
    raise nifti.DataError(f"{source}: mask of shape {mask.shape} does not match the input grid "
                          f"{tuple(lr_shape)}")
  if not mask.any():
    raise nifti.DataError(f"{source}: empty mask")
  return mask
