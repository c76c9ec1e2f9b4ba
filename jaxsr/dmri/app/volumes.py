"""The volumes of a series through the model, one job: normalised as in training, batched as
memory allows, made consistent with the input, with an uncertainty when asked.

`upsample` works on arrays and affines (the Python API, `jaxsr.upsample`), and
`upsample_volumes` volume by volume, so a 4D series never has to fit in memory
(`jaxsr.dmri.app.upsample_files`: the `jaxsr upsample` command on NIfTI files). Without a
checkpoint both use the general model shipped in the package
(`jaxsr.dmri.app.pretrained`, `configs/general.py`); with `adapt` the model is first
fine-tuned on the input itself (`jaxsr.dmri.app.adapt`).

Geometry (`jaxsr.geometry`): the output grid covers the input's field of view;
the model is queried at the output voxel centres in the frame it was trained in.

Intensities follow the model's training data:
  * general models (`data.intensity_percentile` in their config) take every
    volume divided by that percentile of its voxels (inside the mask, if one is
    given), as the domain-randomised patches they were trained on have their
    brightest tissue near 1, and multiply the output back; outputs are >= 0;
  * models trained on subjects (`jaxsr.dmri.data.subjects`), whose b-shell volumes
    were divided by the mean b0 (values in [0, 1]) and the T1 by its 99.5th
    percentile: with b-values, each diffusion-weighted volume is divided by the
    mean b0 of the input, super-resolved and multiplied by the super-resolved
    mean b0; b0 volumes, the mean b0 and every volume of an input without
    b-values are divided by their maximum (inside the mask), super-resolved and
    multiplied back; outputs stay in [0, the input's maximum].
Model outputs are then made consistent with the input (`degrade.back_project`,
`back_projection` iterations: degrading the output reproduces the input, exactly
along k-space-truncated axes) under the input's PSF: by default "auto", which
takes k-space truncation or the anti-aliased cubic degradation per group of axes
(in-plane, through-plane) from the grid and the first volume's output
(`jaxsr.dmri.degradation.acquisition`; chosen over the cubic degradation on the validation
scans, docs/results_real.md), or the PSF given (`psf`). With a mask,
normalisation uses the voxels inside it and the output is 0 outside it.
The T1 is resampled onto the output grid through both affines (cubic) and then
degraded onto the input grid by the training degradation, so it reaches the
model exactly as in training.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from jaxsr import geometry, nifti
from jaxsr.dmri.app import uncertainty as uncertainty_lib
from jaxsr.dmri.app.model import Upsampler, check_t1, t1_channel
from jaxsr.dmri.app.settings import UpsampleSettings, default_batch
from jaxsr.dmri.data import btable
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.degradation.degrade import back_project
from jaxsr.dmri.inference.memory import MemoryPlan, plan_batch
from jaxsr.dmri.inference.reconstruct import reconstruct
from jaxsr.errors import UpsampleError


def _volume_kinds(num_volumes: int, bvals: np.ndarray | None, upsampler: Upsampler) -> list[str]:
  """Per volume: 'dwi' (divided by the mean b0), 'intensity' (by its maximum) or 'percentile'."""
  if upsampler.intensity_percentile is not None:
    return ["percentile"] * num_volumes
  if bvals is None:
    return ["intensity"] * num_volumes
  is_b0 = np.asarray(bvals) <= btable.B0_THRESHOLD
  return ["intensity" if b0 else "dwi" for b0 in is_b0]


def intensity_reference(volume: np.ndarray, mask: np.ndarray | None, upsampler: Upsampler
                        ) -> float:
  """What a volume is divided by before the model: its `intensity_percentile` or maximum
  (inside `mask` when given)."""
  values = volume[mask] if mask is not None else volume
  if upsampler.intensity_percentile is not None:
    return float(np.percentile(values, upsampler.intensity_percentile))
  return float(values.max())


def upsample_volumes(read: Callable[[int], np.ndarray], num_volumes: int,
                     lr_shape: Sequence[int], lr_affine: np.ndarray,
                     hr_shape: Sequence[int], upsampler: Upsampler,
                     settings: UpsampleSettings = UpsampleSettings(), *,
                     bvals: np.ndarray | None = None, t1: nifti.Volume | None = None,
                     mask: np.ndarray | None = None, plan: MemoryPlan | None = None,
                     progress: bool = False, source: str = "input", record: dict | None = None
                     ) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, np.ndarray]]:
  """The super-resolved (X, Y, Z) float32 volumes, in signal units, as an iterator; with
  `settings.uncertainty`, (volume, its uncertainty map) pairs.

  Inputs are checked, the T1 prepared and memory planned when this is called;
  each volume is then read, super-resolved and yielded one at a time.

  Args:
    read: volume index -> (x, y, z) float32 LR volume.
    num_volumes: how many volumes `read` gives.
    lr_shape, lr_affine: the LR grid (x, y, z) and its (4, 4) voxel -> world mm.
    hr_shape: the output grid (`geometry.output_shape`), same field of view.
    upsampler: the model.
    settings: how (`UpsampleSettings`): the memory budget (`plan` overrides the plan made
      from it: `jaxsr.dmri.inference.memory.plan_batch`); `batch`, the volumes super-resolved
      together at most as memory allows (the outputs are the same, to float rounding);
      `uncertainty`, a method for a per-voxel uncertainty (expected absolute error, signal
      units) beside each volume; `back_projection`, iterations of data consistency on each
      model output; `psf`, the input's PSF: "auto" (decided per axis from the grid and the
      first volume super-resolved, `jaxsr.dmri.degradation.acquisition`, and kept for the
      series), a name or three (back-projection degrades with it; None: the training
      degradation, anti-aliased cubic). `adapt` is not read here (`adaptation`).
    bvals: (V,) s/mm² or None (see the module docstring for what changes).
    t1: the T1 at its own grid; required iff the model takes a T1.
    mask: (x, y, z) bool brain mask on the LR grid, or None.
    progress: show a progress bar over tiles and chunks of every volume.
    source: the input's name, for errors.
    record: a dict that receives "psf": what was used (with "auto": the choice and why),
      once the first volume is made; a "psf" it already holds is kept.

  Raises:
    DataError: a T1 that is missing, unexpected or not overlapping; no b0 with b-values.
    MemoryBudgetError: `settings.max_memory` too small for one tile.
  """
  lr_shape = tuple(int(n) for n in lr_shape)
  hr_shape = tuple(int(n) for n in hr_shape)
  if settings.back_projection < 0:
    raise UpsampleError(f"back-projection iterations must be >= 0, got "
                        f"{settings.back_projection}")
  check_t1(upsampler, t1.path if t1 is not None else None)
  kinds = _volume_kinds(num_volumes, bvals, upsampler)
  b0s = btable.b0_indices(bvals, source=source) if "dwi" in kinds else None
  if settings.uncertainty is not None:
    uncertainty_lib.check_method(settings.uncertainty)
  if plan is None:
    plan = plan_batch(upsampler.model, upsampler.params, upsampler.in_channels, lr_shape,
                      hr_shape, settings.max_memory,
                      min(settings.batch or default_batch(), num_volumes))
  volume_sr = _VolumeSR(upsampler, plan, lr_shape, lr_affine, hr_shape, t1, mask,
                        settings.back_projection, settings.psf,
                        record if record is not None else {}, settings.uncertainty)
  volumes = _generate(read, kinds, b0s, volume_sr, progress, source)
  return volumes if settings.uncertainty is not None else (out for out, _ in volumes)


class _VolumeSR:
  """LR volumes through the model (`plan.batch` at a time), in the intensity units of its
  training."""

  def __init__(self, upsampler: Upsampler, plan: MemoryPlan, lr_shape, lr_affine, hr_shape,
               t1: nifti.Volume | None, mask: np.ndarray | None, back_projection: int,
               psf: str | tuple[str, str, str] | None, record: dict,
               uncertainty: str | None = None):
    self.upsampler, self.plan = upsampler, plan
    self.uncertainty = uncertainty
    self.lr_shape, self.hr_shape = lr_shape, hr_shape
    self.mask, self.back_projection, self.psf = mask, back_projection, psf
    self.voxel_size = nib.affines.voxel_sizes(lr_affine)
    self.record = record
    if psf != acquisition.AUTO:  # a choice recorded before (`adapt_on_series`) stays
      record.setdefault("psf", {"mode": "given" if psf is not None else "training degradation",
                                "per_axis": list(psf) if psf is not None else None})
    self.mask_hr = geometry.nearest_on_output(mask, hr_shape) if mask is not None else None
    self.channels = ([t1_channel(t1, lr_shape, lr_affine, hr_shape, self.mask_hr)]
                     if upsampler.uses_t1 else [])
    # General models give any intensity back (no upper bound); the others [0, 1] of the reference.
    self.upper = None if upsampler.intensity_percentile is not None else 1.0

  @property
  def passes(self) -> int:
    """Progress units (tiles and chunks) of one volume (two model passes with a flip
    uncertainty)."""
    runs = 2 if self.uncertainty and uncertainty_lib.needs_flip(self.uncertainty) else 1
    return runs * self.plan.num_passes(self.lr_shape, self.hr_shape)

  def _raw(self, inputs: np.ndarray, bar: tqdm) -> np.ndarray:
    """(B, X, Y, Z) model outputs for a (B, x, y, z, C) batch, as one batch. A batch short of
    `plan.batch` (a series' last, the mean b0) is padded with blank volumes, so that every
    batch runs the programs compiled once (their outputs are dropped)."""
    batch, size = len(inputs), self.plan.batch
    if 1 < size and batch < size:
      inputs = np.concatenate([inputs, np.zeros((size - batch,) + inputs.shape[1:],
                                                inputs.dtype)])
    outs = reconstruct(self.upsampler.model, self.upsampler.params,
                       inputs if size > 1 else inputs[0], self.hr_shape,
                       chunk_size=self.plan.chunk_size, tile=self.plan.tile,
                       progress=lambda n: bar.update(n * batch), conv_impl=self.plan.conv_impl)
    return outs[:batch] if size > 1 else outs[None]

  def normalised(self, xs: list[np.ndarray], bar: tqdm
                 ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(output, uncertainty or None) of the model for normalised LR volumes `xs` (at most
    `plan.batch`, through the model together), each output back-projected onto its input."""
    inputs = np.stack([np.stack([x, *self.channels], axis=-1) for x in xs]).astype(np.float32)
    raws = self._raw(inputs, bar)
    if self.psf == acquisition.AUTO:  # decided on the first volume, kept for the series
      choice = acquisition.estimate_psf(raws[0], xs[0], self.voxel_size,
                                        self.upsampler.psf_thresholds)
      self.psf = choice.psf
      self.record["psf"] = choice.record()
    outs = [back_project(raw, x, self.back_projection, psf=self.psf)
            for raw, x in zip(raws, xs)]
    uncertainties = [None] * len(xs)
    if self.uncertainty is not None:
      flipped_raws = []  # the flipped batch's outputs, made once where the method needs them

      def raw_flipped(index):
        if not flipped_raws:
          flipped_raws.extend(uncertainty_lib.flipped(
              self._raw(uncertainty_lib.flipped(inputs, axes=(1,)), bar), axes=(1,)))
        return flipped_raws[index]
      uncertainties = [uncertainty_lib.uncertainty_map(
          self.uncertainty, raw, out, x, self.back_projection, self.psf,
          lambda index=index: raw_flipped(index))
          for index, (raw, out, x) in enumerate(zip(raws, outs, xs))]
    return [(np.clip(out, 0.0, self.upper), unc) for out, unc in zip(outs, uncertainties)]

  def by_reference(self, volume: np.ndarray) -> tuple[np.ndarray, np.float32] | None:
    """(the volume divided by its reference intensity, the reference), None for a blank one."""
    reference = intensity_reference(volume, self.mask, self.upsampler)
    if not reference > 0:
      return None
    x = np.clip(volume / reference, 0.0, self.upper)
    return (x if self.mask is None else x * self.mask), np.float32(reference)

  def outputs(self, jobs: list[tuple[np.ndarray, np.ndarray | np.float32] | None], bar: tqdm
              ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per job (normalised input, what its output is multiplied by; None: a blank volume) the
    output in signal units and its uncertainty (None unless asked), the jobs through the
    model together."""
    made = iter(self.normalised([job[0] for job in jobs if job is not None], bar)
                if any(job is not None for job in jobs) else [])
    outs = []
    for job in jobs:
      if job is None:
        bar.update(self.passes)
        blank = np.zeros(self.hr_shape, np.float32)
        outs.append((blank, blank if self.uncertainty is not None else None))
      else:
        out, unc = next(made)
        outs.append((out * job[1], unc * np.abs(job[1]) if unc is not None else None))
    return outs


def _generate(read: Callable[[int], np.ndarray], kinds: list[str], b0s: np.ndarray | None,
              volume_sr: _VolumeSR, progress: bool, source: str
              ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
  """The output volumes and their uncertainties (None unless asked): diffusion-weighted
  ones over the mean b0, the others by reference; `plan.batch` volumes through the model at
  a time."""
  num_volumes = len(kinds)
  passes = num_volumes + (b0s is not None)
  batch = volume_sr.plan.batch
  with tqdm(total=passes * volume_sr.passes, desc="upsample", unit="pass",
            disable=not progress, dynamic_ncols=True) as bar:
    if b0s is not None:
      mean_b0 = np.mean([read(int(i)) for i in b0s], axis=0, dtype=np.float32)
      valid = mean_b0 > 0 if volume_sr.mask is None else volume_sr.mask & (mean_b0 > 0)
      bar.set_postfix_str("mean b0")
      (mean_b0_hr, _), = volume_sr.outputs([volume_sr.by_reference(mean_b0)], bar)
    for first in range(0, num_volumes, batch):
      indices = range(first, min(first + batch, num_volumes))
      bar.set_postfix_str(f"volume {indices[-1] + 1}/{num_volumes}")
      jobs = []
      for index in indices:
        volume = read(index)
        if kinds[index] == "dwi":
          ratio = np.zeros(volume_sr.lr_shape, np.float32)
          np.divide(volume, mean_b0, out=ratio, where=valid)
          jobs.append((np.clip(ratio, 0.0, 1.0), mean_b0_hr))
        else:
          jobs.append(volume_sr.by_reference(volume))
      for index, (out, unc) in zip(indices, volume_sr.outputs(jobs, bar)):
        if not np.all(np.isfinite(out)):  # never written: the caller writes to a temporary
          raise UpsampleError(f"{source}: volume {index}: the model gave non-finite values")
        if volume_sr.mask_hr is not None:
          out = out * volume_sr.mask_hr
          unc = unc * volume_sr.mask_hr if unc is not None else None
        yield out, unc
