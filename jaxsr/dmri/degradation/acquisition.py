"""`--psf auto`: which PSF each axis of a user's scan was acquired with, from its grid and itself.

An MR image is acquired in-plane by sampling k-space (its in-plane PSF is a
k-space truncation) and through-plane by exciting slices (a slice profile), or,
in a 3D acquisition, by k-space on every axis; a resampled or smoothed image has
a spatial PSF. Data consistency (`jaxsr.dmri.degradation.degrade.back_project`) is only as
right as the PSF it assumes, so `auto` decides it per axis:

1. The grid groups the axes (`axis_groups`): the two axes of equal voxel size
   are in-plane and the odd one through-plane; where all three agree
   (isotropic), the through-plane axis cannot be told and all axes form one
   group.
2. The scan decides each degraded group (`estimate_psf`): the model's own
   output, which never saw the PSF (the shipped model is trained on every PSF),
   is degraded onto the input grid with k-space truncation and with each
   spatial candidate (`SPATIAL_CANDIDATES`) along that group's axes; the group
   takes `kspace` when truncation's residual is at most the best spatial one times the
   group's threshold, else `cubic` (the back-projection of the training degradation;
   degrading with the winning spatial candidate instead gained nothing on the validation
   scans). The other group is held at its current choice, so a scan degraded in-plane and
   through-plane is decided one group after the other.

   The thresholds belong to the model: how far its blind output's in-band content follows
   the input depends on what it learnt. `calibrate` fits them on images whose PSF is known
   (`jaxsr.dmri.studies.psf_calibration`: rendered volumes, never the validation or test
   scans), and an exported model may carry them in its manifest ("psf_thresholds"); models
   without them, the shipped one included (its fitted through-plane cut took k-space on real
   slice profiles, docs/results_real.md), use `DEFAULT_THRESHOLDS` (1 % in favour of k-space
   in-plane, where physics expects it, set on the real validation scans; through-plane a
   slice profile unless k-space does better outright).
3. Groups with no upsampled axis keep the physics default (`PHYSICS_DEFAULT`),
   which changes nothing there: the PSF of an axis at factor 1 is never used. (A
   decided group's axes all take its choice, upsampled or not, to the same effect.)

The test is only a comparison of residuals, so it costs four degradations of one
volume; the decision and every residual go into the output's record.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxsr.dmri.degradation import psf as psf_lib

AUTO = "auto"
# Voxel sizes within this fraction of each other are equal (scanners round them).
EQUAL_VOXEL_TOLERANCE = 0.05
PHYSICS_DEFAULT = {"in-plane": "kspace", "through-plane": "cubic", "isotropic": "cubic"}
SPATIAL_CANDIDATES = (("cubic", 1.0), ("block", 1.0), ("gaussian", 0.7))
# k-space when its residual <= the best spatial one x this, per group role. In-plane axes
# are k-space by physics: they keep it unless a spatial PSF does better by over 1 % (the
# validation scans' margins, docs/results_real.md). For models whose manifest has none.
DEFAULT_THRESHOLDS = {"in-plane": 1.01, "through-plane": 1.0, "isotropic": 1.0}
ROLES = tuple(DEFAULT_THRESHOLDS)


@dataclasses.dataclass(frozen=True)
class AxisGroup:
  """Axes acquired alike: `role` in-plane, through-plane or isotropic."""
  role: str
  axes: tuple[int, ...]


def axis_groups(voxel_size: Sequence[float], tolerance: float = EQUAL_VOXEL_TOLERANCE
                ) -> list[AxisGroup]:
  """In-plane and through-plane axes of a grid of (3,) voxel sizes (mm), or one isotropic group.

  Two axes of equal size and a third of another are in-plane and through-plane;
  all three equal: isotropic; all three different: the largest is through-plane.
  """
  size = np.asarray(voxel_size, np.float64)
  if size.shape != (3,) or not np.all(size > 0):
    raise ValueError(f"need three positive voxel sizes, got {tuple(voxel_size)}")

  def equal(a, b):
    return abs(size[a] - size[b]) <= tolerance * max(size[a], size[b])

  pairs = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if equal(a, b)]
  if len(pairs) >= 2:  # two equalities within tolerance make the third one nearly so
    return [AxisGroup("isotropic", (0, 1, 2))]
  if len(pairs) == 1:
    in_plane = pairs[0]
    odd = ({0, 1, 2} - set(in_plane)).pop()
    return [AxisGroup("in-plane", in_plane), AxisGroup("through-plane", (odd,))]
  odd = int(np.argmax(size))
  return [AxisGroup("in-plane", tuple(a for a in range(3) if a != odd)),
          AxisGroup("through-plane", (odd,))]


@dataclasses.dataclass(frozen=True)
class PSFChoice:
  """The per-axis PSF `auto` chose and why (what the output's record says)."""
  psf: tuple[str, str, str]
  groups: tuple[AxisGroup, ...]
  residuals: dict  # group role -> {candidate: RMS residual / the input's 99th percentile}
  note: str
  thresholds: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

  def record(self) -> dict:
    return {"mode": AUTO, "per_axis": list(self.psf),
            "groups": {g.role: list(g.axes) for g in self.groups},
            "residuals": self.residuals, "thresholds": self.thresholds, "note": self.note}


def kspace_ratio(scores: dict) -> float:
  """A group's k-space residual over its best spatial candidate's (both 0: 1, a tie)."""
  spatial = min(v for k, v in scores.items() if k != "kspace")
  if spatial == 0:
    return 1.0 if scores["kspace"] == 0 else float("inf")
  return scores["kspace"] / spatial


def check_thresholds(thresholds: dict | None) -> dict:
  """`thresholds` (role -> positive number; missing roles take the default) or the defaults."""
  out = dict(DEFAULT_THRESHOLDS)
  for role, value in (thresholds or {}).items():
    if role not in out or not float(value) > 0:
      raise ValueError(f"PSF thresholds need positive values for roles {ROLES}, got "
                       f"{role!r}: {value!r}")
    out[role] = float(value)
  return out


def consistency_residual(estimate: np.ndarray, lr: np.ndarray, psf: str | Sequence[str] | None,
                         fwhm: float = 1.0, scale: float | None = None) -> float:
  """RMS of `estimate` (X, Y, Z) degraded onto `lr` (x, y, z) by `psf` (None: psf's cubic
  profile, the training degradation's but for its borders, which reflect) minus `lr`, over
  `lr`'s 99th percentile: how well an
  HR estimate explains the measurement. Inputs are magnitudes, clipped at 0 where a
  truncation's ringing would go below it: so is the simulation. `scale`: that percentile,
  where the caller has it."""
  lr = np.asarray(lr, np.float32)
  simulated = np.clip(psf_lib.degrade(np.asarray(estimate, np.float32), lr.shape,
                                      psf if psf is not None else "cubic", fwhm), 0.0, None)
  scale = scale if scale is not None else (float(np.percentile(lr, 99)) or 1.0)
  return float(np.sqrt(np.mean((simulated - lr) ** 2)) / scale)


def estimate_psf(estimate: np.ndarray, lr: np.ndarray, voxel_size: Sequence[float],
                 thresholds: dict | None = None) -> PSFChoice:
  """The per-axis PSF under which `estimate` (X, Y, Z), a PSF-blind HR estimate, best
  reproduces the measured `lr` (x, y, z); see the module docstring.

  Args:
    estimate: the model's output on the HR grid (any intensity scale shared with `lr`).
    lr: the input on its own grid.
    voxel_size: (3,) the input's voxel size in mm (for the axis groups).
    thresholds: per group role, the model's (`calibrate`); None: `DEFAULT_THRESHOLDS`.
  """
  thresholds = check_thresholds(thresholds)
  estimate = np.asarray(estimate, np.float32)
  lr = np.asarray(lr, np.float32)
  groups = axis_groups(voxel_size)
  degraded = [g for g in groups if any(estimate.shape[a] != lr.shape[a] for a in g.axes)]
  # Undecided groups start at the cubic profile; groups with nothing upsampled keep the
  # physics default (unused there).
  chosen = ["cubic"] * 3
  for group in groups:
    for a in group.axes:
      chosen[a] = "cubic" if group in degraded else PHYSICS_DEFAULT[group.role]
  scale = float(np.percentile(lr, 99)) or 1.0
  residuals = {}
  for group in degraded:  # in order: the in-plane group decides first
    scores = {}
    for name, fwhm in (("kspace", 1.0), *SPATIAL_CANDIDATES):
      trial = list(chosen)
      for a in group.axes:
        trial[a] = name
      key = name if name != "gaussian" else f"gaussian_fwhm{fwhm:g}"
      scores[key] = consistency_residual(estimate, lr, tuple(trial), fwhm, scale)
    for a in group.axes:
      chosen[a] = "kspace" if kspace_ratio(scores) <= thresholds[group.role] else "cubic"
    residuals[group.role] = scores
  if len(groups) == 1:
    note = "isotropic grid: the axes are not told apart; one PSF for all"
  else:
    note = (f"axes {list(groups[0].axes)} in-plane, axis {groups[1].axes[0]} through-plane "
            "(by voxel size)")
  if not degraded:
    note += "; no axis is upsampled"
  return PSFChoice(tuple(chosen), tuple(groups), residuals, note, thresholds)


def calibrate(samples: Sequence[tuple[str, float, bool]]) -> dict[str, float]:
  """Per group role, the threshold that best separates k-space-truncated cases from spatial
  ones: samples (role, `kspace_ratio`, whether the case's PSF was k-space truncation).

  The threshold misclassifies the fewest samples (k-space iff ratio <= threshold) and sits
  halfway between the two ratios it separates; among equally good cuts, the widest gap. A
  role with samples of one kind only keeps its default.
  """
  out = dict(DEFAULT_THRESHOLDS)
  for role in ROLES:
    points = sorted((r, k) for rl, r, k in samples if rl == role)
    if not any(k for _, k in points) or all(k for _, k in points):
      continue
    best = None
    for i in range(1, len(points)):
      lo, hi = points[i - 1][0], points[i][0]
      if hi <= lo:
        continue
      errors = (sum(not k for _, k in points[:i]) + sum(k for _, k in points[i:]))
      key = (errors, -(hi - lo))
      if best is None or key < best[0]:
        best = (key, 0.5 * (lo + hi))
    if best is not None:
      out[role] = float(best[1])
  return out


def psf_option(value: str | Sequence[str] | None) -> str | tuple[str, str, str] | None:
  """A `--psf` value checked: None (the training degradation), "auto", or per-axis names
  (one name, three, or "x,y,z"); PSFError otherwise."""
  if value is None or value == AUTO:
    return value
  if isinstance(value, str):
    names = [v.strip() for v in value.split(",")]
    return psf_lib.per_axis(names[0] if len(names) == 1 else names)
  return psf_lib.per_axis(value)
