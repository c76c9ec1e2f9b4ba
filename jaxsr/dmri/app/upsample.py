"""Super-resolution of a user's own scans: any voxel size, 3D or 4D, T1 and mask, bounded memory.

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

import dataclasses
import hashlib
import math
import os
import pathlib
from typing import Callable, Iterator, Sequence

import jax
import ml_collections
import nibabel as nib
import numpy as np
from tqdm import tqdm

from jaxsr import anatomy, geometry, nifti
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.app import adapt as adapt_lib
from jaxsr.dmri.data import btable
from jaxsr.dmri.app import pretrained
from jaxsr.dmri.degradation import psf as psf_lib
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.app import uncertainty as uncertainty_lib
from jaxsr.dmri.degradation.degrade import back_project, degrade
from jaxsr.dmri.inference.memory import MemoryPlan, plan_batch
from jaxsr.dmri.models import is_implicit
from jaxsr.dmri.inference.reconstruct import reconstruct
from jaxsr.errors import UpsampleError

DEFAULT_MAX_MEMORY = 4 * 2**30  # bytes: the whole process, fits a laptop
DEFAULT_MAX_OUTPUT_VOXELS = 2**28  # per 3D volume: 1 GiB of float32
DEFAULT_BACK_PROJECTION = 3  # iterations; 0: the model's output as it is
DEFAULT_PSF = acquisition.AUTO  # chosen over the training degradation on the validation scans


def default_batch() -> int:
  """Volumes of a series super-resolved together at most: 1 on a CPU, where a batch is no
  faster per volume (docs/benchmarks.md) and costs memory; 8 on an accelerator, where one
  volume's programs are too small to fill it."""
  return 1 if jax.default_backend() == "cpu" else 8


@dataclasses.dataclass(frozen=True)
class Upsampler:
  """A trained arbitrary-scale model: from a run directory, an exported folder or the package.

  Attributes:
    model: the implicit model (`model.kind` csr_dmri).
    params: its parameters.
    in_channels: 1 (DWI only) or 2 (DWI + T1).
    run_dir: where it was restored from.
    step: the checkpoint's training step.
    config: the config it was trained with.
  """
  model: object
  params: dict
  in_channels: int
  run_dir: str
  step: int
  config: ml_collections.ConfigDict | None = None

  @classmethod
  def from_checkpoint(cls, run_dir: str | os.PathLike, step: int | None = None) -> "Upsampler":
    """Checkpoint `step` (default: the latest) of `run_dir` (a `train.py --workdir`), or an
    exported model folder (`jaxsr.dmri.app.pretrained`: the shipped model, `--save-adapted`
    output).

    Raises:
      CheckpointError: no usable checkpoint, or a model that is not arbitrary-scale.
      PretrainedError: an exported folder that is incomplete or corrupted.
    """
    # On use: the checkpoint library (orbax, grain) is slow to import, and the shipped model
    # is an exported folder that needs neither.
    from jaxsr.train.checkpoint import CheckpointError, load_run

    if pretrained.is_exported(run_dir):
      config, model, params, manifest = pretrained.load(run_dir)
      step = int(manifest.get("step", 0))
    else:
      run = load_run(run_dir, step, family_steps=[step_lib])
      config, model, params, step = run.config, run.model, run.variables["params"], run.step
    kind = config.model.kind
    if not is_implicit(kind):
      raise CheckpointError(f"{run_dir}: a fixed-scale {kind!r} model; upsampling to any voxel "
                            "size needs an arbitrary-scale model (model.kind csr_dmri)")
    return cls(model, params, int(config.model.in_channels), os.fspath(run_dir), step, config)

  @classmethod
  def general(cls) -> "Upsampler":
    """The general model shipped with jaxsr (`configs/general.py`); PretrainedError if missing."""
    return cls.from_checkpoint(pretrained.general_model_dir())

  @property
  def uses_t1(self) -> bool:
    return self.in_channels == 2

  @property
  def intensity_percentile(self) -> float | None:
    """Inputs are divided by this percentile of each volume (general models), or None: by the
    maximum, diffusion-weighted volumes by the mean b0 (models trained on
    `jaxsr.dmri.data.subjects`)."""
    data = self.config.get("data", {}) if self.config is not None else {}
    value = data.get("intensity_percentile")
    return float(value) if value else None

  @property
  def fft_weight(self) -> float:
    return float(self.config.train.fft_weight) if self.config is not None else 0.0

  def params_sha256(self) -> str:
    """SHA-256 of the parameters' values (leaves in tree order, float32 bytes): names the
    exact weights an output was made with, whatever folder they came from."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(self.params):
      digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return digest.hexdigest()

  def with_params(self, params, source: str) -> "Upsampler":
    return dataclasses.replace(self, params=params, run_dir=source)


def check_t1(upsampler: Upsampler, t1_path: str | os.PathLike | None) -> None:
  """Raises DataError unless a T1 is given exactly when the model was trained with one."""
  if upsampler.uses_t1 and t1_path is None:
    raise nifti.DataError(f"{upsampler.run_dir}: this model was trained with a T1: give one "
                          "(--t1), or use a model trained without (configs/arssr.py)")
  if t1_path is not None and not upsampler.uses_t1:
    raise nifti.DataError(f"{t1_path}: the model in {upsampler.run_dir} was trained without a "
                          "T1; leave it out, or use a model trained with one")


def t1_channel(t1: nifti.Volume, lr_shape: Sequence[int], lr_affine: np.ndarray,
               hr_shape: Sequence[int], mask_hr: np.ndarray | None) -> np.ndarray:
  """The model's T1 input on the LR grid: (x, y, z) float32 in [0, 1].

  The T1 is resampled (cubic, through both affines) onto the HR output grid,
  scaled as in training (`anatomy.normalise_t1`: 99.5th percentile inside
  `mask_hr`, or over its positive voxels), then degraded onto the LR grid like
  the training data.

  Raises:
    DataError: naming the T1, when it does not overlap the grid or has no signal there.
  """
  hr_affine = geometry.output_affine(lr_affine, lr_shape, hr_shape)
  hr = nifti.resample_to_grid(t1, tuple(hr_shape), hr_affine, order=3, mask=mask_hr)
  inside, region = (mask_hr, "the mask") if mask_hr is not None else (hr > 0, "the field of view")
  return np.asarray(degrade(anatomy.normalise_t1(hr, inside, t1.path, region), lr_shape),
                    np.float32)


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


def adapt_upsampler(upsampler: Upsampler, scan: np.ndarray, lr_shape: Sequence[int],
                    hr_shape: Sequence[int], settings: adapt_lib.AdaptSettings, *,
                    mask: np.ndarray | None = None, progress: bool = False
                    ) -> tuple[Upsampler, adapt_lib.AdaptResult]:
  """`upsampler` fine-tuned on one LR volume `scan` (`jaxsr.dmri.app.adapt`) for the factors hr/lr,
  or as it was where held-out parts of the scan say adaptation does not help; and what was
  decided."""
  prepare_adaptation(upsampler, scan.shape, hr_shape, settings)
  reference = intensity_reference(scan, mask, upsampler)
  if not reference > 0:
    raise adapt_lib.AdaptError("the scan has no signal to adapt to")
  factors = [h / l for h, l in zip(hr_shape, lr_shape)]
  result = adapt_lib.adapt_params(upsampler.model, upsampler.params,
                                  np.clip(scan / reference, 0.0, None), factors, settings,
                                  fft_weight=upsampler.fft_weight, progress=progress)
  if not result.kept:
    return upsampler, result
  source = f"{upsampler.run_dir} adapted ({result.best_step} of {settings.steps} steps)"
  return upsampler.with_params(result.params, source), result


def psf_before_adaptation(upsampler: Upsampler, volume: np.ndarray, lr_affine: np.ndarray,
                          hr_shape: Sequence[int], psf, *, mask: np.ndarray | None = None,
                          max_memory: int = DEFAULT_MAX_MEMORY, plan: MemoryPlan | None = None,
                          record: dict) -> str | tuple[str, str, str] | None:
  """`psf`, or with "auto" the per-axis PSF decided on the model's output for `volume` before
  any adaptation (what adaptation then trains with and the output is made consistent
  under: an adapted model's output would decide it on what adaptation changed);
  record["psf"] says which."""
  psf = acquisition.psf_option(psf)
  if psf != acquisition.AUTO:
    return psf
  decided = {}
  for _ in upsample_volumes(lambda _: volume, 1, volume.shape, lr_affine, hr_shape, upsampler,
                            mask=mask, max_memory=max_memory, back_projection=0, psf=psf,
                            plan=plan, record=decided):
    pass
  if "psf" not in decided:  # a blank volume is never run through the model
    raise adapt_lib.AdaptError("the scan has no signal to adapt to")
  record["psf"] = {**decided["psf"],
                   "decided": "on the unadapted model's output for the volume adapted to, "
                              "before adapting"}
  return tuple(decided["psf"]["per_axis"])


def adaptation_volume(read: Callable[[int], np.ndarray], num_volumes: int,
                      bvals: np.ndarray | None) -> tuple[np.ndarray, list[int]]:
  """(the LR volume a series is adapted to, the indices of the volumes it is made of): the
  mean of the b0s where b-values say which they are, else the first volume.

  The b0s have the most signal of a diffusion series and share its anatomy; averaging k of
  them divides the noise by about √k, so adaptation learns the scan, not its noise. One
  adaptation then serves every volume of the series.
  """
  if bvals is None:
    return read(0), [0]
  indices = [int(i) for i in btable.b0_indices(bvals, source="<bvals>")]
  return np.mean([read(i) for i in indices], axis=0, dtype=np.float32), indices


def adapt_on_series(upsampler: Upsampler, read: Callable[[int], np.ndarray], num_volumes: int,
                    bvals: np.ndarray | None, lr_affine: np.ndarray, hr_shape: Sequence[int],
                    psf, settings: adapt_lib.AdaptSettings, *, mask: np.ndarray | None,
                    record: dict, max_memory: int = DEFAULT_MAX_MEMORY,
                    plan: MemoryPlan | None = None, progress: bool = False
                    ) -> tuple[Upsampler, object, adapt_lib.AdaptSettings]:
  """`--adapt` once for a whole series, on `adaptation_volume`: the PSF decided first
  (`psf_before_adaptation`), adaptation with it (`adapt_upsampler`), both written to
  `record` ("psf", "adapt", with the volumes adapted to); every volume then uses the result.

  Returns (the upsampler to use, the PSF for the series, the settings adapted with).
  """
  volume, indices = adaptation_volume(read, num_volumes, bvals)
  prepare_adaptation(upsampler, volume.shape, hr_shape, settings)
  psf = psf_before_adaptation(upsampler, volume, lr_affine, hr_shape, psf, mask=mask,
                              max_memory=max_memory, plan=plan, record=record)
  settings = with_psf(settings, psf)
  upsampler, result = adapt_upsampler(upsampler, volume, volume.shape, hr_shape, settings,
                                      mask=mask, progress=progress)
  record["adapt"] = {**result.record(), "volumes": indices,
                     "psf": list(psf_lib.per_axis(settings.psf)) if settings.psf else None}
  return upsampler, psf, settings


def save_adapted_model(upsampler: Upsampler, folder: str | os.PathLike,
                       settings: adapt_lib.AdaptSettings, source: str, kept: bool = True
                       ) -> pathlib.Path:
  """Exports the parameters used after adaptation (`jaxsr.dmri.app.pretrained` format; the
  original ones, with "kept": false in the manifest, where adaptation was not kept);
  `--checkpoint FOLDER` reuses them."""
  return pretrained.export(folder, upsampler.config, upsampler.params, step=upsampler.step,
                           source=upsampler.run_dir, adapted_on=source,
                           adapt={**dataclasses.asdict(settings), "kept": kept})


def upsample_volumes(read: Callable[[int], np.ndarray], num_volumes: int,
                     lr_shape: Sequence[int], lr_affine: np.ndarray,
                     hr_shape: Sequence[int], upsampler: Upsampler, *,
                     bvals: np.ndarray | None = None, t1: nifti.Volume | None = None,
                     mask: np.ndarray | None = None, max_memory: int = DEFAULT_MAX_MEMORY,
                     back_projection: int = DEFAULT_BACK_PROJECTION,
                     psf: str | Sequence[str] | None = DEFAULT_PSF,
                     plan: MemoryPlan | None = None, batch: int | None = None,
                     uncertainty: str | None = None, progress: bool = False,
                     source: str = "input", record: dict | None = None
                     ) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, np.ndarray]]:
  """The super-resolved (X, Y, Z) float32 volumes, in signal units, as an iterator; with
  `uncertainty`, (volume, its uncertainty map) pairs.

  Inputs are checked, the T1 prepared and memory planned when this is called;
  each volume is then read, super-resolved and yielded one at a time.

  Args:
    read: volume index -> (x, y, z) float32 LR volume.
    num_volumes: how many volumes `read` gives.
    lr_shape, lr_affine: the LR grid (x, y, z) and its (4, 4) voxel -> world mm.
    hr_shape: the output grid (`geometry.output_shape`), same field of view.
    upsampler: the model.
    bvals: (V,) s/mm² or None (see the module docstring for what changes).
    t1: the T1 at its own grid; required iff the model takes a T1.
    mask: (x, y, z) bool brain mask on the LR grid, or None.
    max_memory: bytes for the whole process (`jaxsr.dmri.inference.memory.plan_batch`); `plan`
      overrides the plan made from it.
    batch: volumes super-resolved together at most, as memory allows (None:
      `default_batch()`); the outputs are the same, to float rounding.
    uncertainty: a method of `jaxsr.dmri.app.uncertainty.METHODS` for a per-voxel uncertainty
      (expected absolute error, signal units) beside each volume, or None.
    back_projection: iterations of back-projection on each model output.
    psf: the input's PSF: "auto" (decided per axis from the grid and the first volume
      super-resolved, `jaxsr.dmri.degradation.acquisition`, and kept for the series), one name of
      `jaxsr.dmri.degradation.psf.PSFS` or three (x, y, z); back-projection degrades with it
      (None: the training degradation, anti-aliased cubic).
    progress: show a progress bar over tiles and chunks of every volume.
    source: the input's name, for errors.
    record: a dict that receives "psf": what was used (with "auto": the choice and why),
      once the first volume is made; a "psf" it already holds is kept.

  Raises:
    DataError: a T1 that is missing, unexpected or not overlapping; no b0 with b-values.
    MemoryBudgetError: `max_memory` too small for one tile.
  """
  lr_shape = tuple(int(n) for n in lr_shape)
  hr_shape = tuple(int(n) for n in hr_shape)
  psf = acquisition.psf_option(psf)
  if back_projection < 0:
    raise UpsampleError(f"back-projection iterations must be >= 0, got {back_projection}")
  check_t1(upsampler, t1.path if t1 is not None else None)
  kinds = _volume_kinds(num_volumes, bvals, upsampler)
  b0s = btable.b0_indices(bvals, source=source) if "dwi" in kinds else None
  if uncertainty is not None:
    uncertainty_lib.check_method(uncertainty)
  if plan is None:
    plan = plan_batch(upsampler.model, upsampler.params, upsampler.in_channels, lr_shape,
                      hr_shape, max_memory, min(batch or default_batch(), num_volumes))
  volume_sr = _VolumeSR(upsampler, plan, lr_shape, lr_affine, hr_shape, t1, mask,
                        back_projection, psf, record if record is not None else {}, uncertainty)
  volumes = _generate(read, kinds, b0s, volume_sr, progress, source)
  return volumes if uncertainty is not None else (out for out, _ in volumes)


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
    """(B, X, Y, Z) model outputs for a (B, x, y, z, C) batch, as one batch."""
    batch = len(inputs)
    outs = reconstruct(self.upsampler.model, self.upsampler.params,
                       inputs if batch > 1 else inputs[0], self.hr_shape,
                       chunk_size=self.plan.chunk_size, tile=self.plan.tile,
                       progress=lambda n: bar.update(n * batch), conv_impl=self.plan.conv_impl)
    return outs if batch > 1 else outs[None]

  def normalised(self, xs: list[np.ndarray], bar: tqdm
                 ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(output, uncertainty or None) of the model for normalised LR volumes `xs` (at most
    `plan.batch`, through the model together), each output back-projected onto its input."""
    inputs = np.stack([np.stack([x, *self.channels], axis=-1) for x in xs]).astype(np.float32)
    raws = self._raw(inputs, bar)
    if self.psf == acquisition.AUTO:  # decided on the first volume, kept for the series
      choice = acquisition.estimate_psf(raws[0], xs[0], self.voxel_size)
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


@dataclasses.dataclass(frozen=True)
class OutputGrid:
  """The output grid: `shape` voxels per axis and the (4, 4) voxel -> world mm `affine`."""
  shape: tuple[int, int, int]
  affine: np.ndarray

  @property
  def voxel_size(self) -> np.ndarray:
    return nib.affines.voxel_sizes(self.affine)


def output_grid(lr_shape: Sequence[int], lr_affine: np.ndarray, *,
                voxel_size=None, scale=None, shape=None,
                max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS) -> OutputGrid:
  """`geometry.output_shape` and `geometry.output_affine`, refusing grids over `max_output_voxels`.

  Raises:
    UpsampleError: a bad request (see `geometry.output_shape`), or an output over the size limit.
  """
  try:
    hr_shape = geometry.output_shape(lr_shape, lr_affine, voxel_size=voxel_size, scale=scale,
                                     out_shape=shape)
  except ValueError as e:
    raise UpsampleError(str(e)) from e
  if math.prod(hr_shape) > max_output_voxels:
    raise UpsampleError(f"the output grid {hr_shape} has {math.prod(hr_shape):,} voxels per "
                     f"volume, over the limit of {max_output_voxels:,} (raise it with "
                     "--max-output-voxels if this is meant)")
  return OutputGrid(hr_shape, geometry.output_affine(lr_affine, lr_shape, hr_shape))


def load_upsampler(checkpoint: str | os.PathLike | Upsampler | None) -> Upsampler:
  """An Upsampler as given, from a run or exported folder, or (None) the shipped general model."""
  if isinstance(checkpoint, Upsampler):
    return checkpoint
  return Upsampler.general() if checkpoint is None else Upsampler.from_checkpoint(checkpoint)


def prepare_adaptation(upsampler: Upsampler, lr_shape: Sequence[int], hr_shape: Sequence[int],
                       settings: adapt_lib.AdaptSettings | None) -> None:
  """Checks an --adapt request before any work: DWI-only model, known PSF, scan large enough."""
  if settings is None or settings.steps == 0:
    return
  if settings.steps < 0:
    raise adapt_lib.AdaptError(f"--adapt takes a number of steps >= 0, got {settings.steps}")
  if upsampler.uses_t1:
    raise UpsampleError("--adapt needs a DWI-only model (this one takes a T1)")
  if settings.psf is not None:
    psf_lib.per_axis(settings.psf)
  adapt_lib.held_out_shapes(lr_shape, [max(1.0, h / l) for h, l in zip(hr_shape, lr_shape)],
                            settings.lr_patch_size)


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


def upsample(data: np.ndarray, affine: np.ndarray,
             checkpoint: str | os.PathLike | Upsampler | None = None, *,
             voxel_size=None, scale=None, shape=None, t1: np.ndarray | None = None,
             t1_affine: np.ndarray | None = None, bvals: np.ndarray | None = None,
             mask: np.ndarray | None = None, max_memory: int = DEFAULT_MAX_MEMORY,
             max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
             back_projection: int = DEFAULT_BACK_PROJECTION,
             psf: str | Sequence[str] | None = DEFAULT_PSF,
             adapt: adapt_lib.AdaptSettings | None = None, batch: int | None = None,
             uncertainty: str | bool | None = None, progress: bool = False,
             record: dict | None = None) -> tuple[np.ndarray, ...]:
  """Super-resolves an (X, Y, Z) or (X, Y, Z, V) array onto a finer grid of its field of view.

  Args:
    data: the LR volume(s); `affine` its (4, 4) voxel -> world mm.
    checkpoint: a run directory (`train.py --workdir`), an exported model folder,
      an `Upsampler`, or None: the general model shipped with jaxsr.
    voxel_size, scale, shape: exactly one: output voxel size in mm, upsampling
      factor, or output voxel counts; one number or three (x, y, z).
    t1, t1_affine: a T1 at its own grid (required by models trained with one).
    bvals: (V,) b-values in s/mm² for 4D diffusion data.
    mask: (X, Y, Z) brain mask on the input grid.
    max_memory: bytes for the whole process; tiles and chunks are sized to fit.
    max_output_voxels: refuse larger output grids (per 3D volume).
    back_projection: iterations of back-projection onto the input (0: none).
    psf: the input's PSF: "auto" (default: decided per axis, `jaxsr.dmri.degradation.acquisition`),
      one name of `jaxsr.dmri.degradation.psf.PSFS` or three (x, y, z), or None (the training
      degradation). Back-projection and adaptation degrade with it ("auto": decided on
      the unadapted model's output for the first volume, or the volume adapted to).
    adapt: fine-tune first (`jaxsr.dmri.app.adapt`), once for the series, on the mean of its
      b0s with `bvals`, else on its first volume (`adaptation_volume`); or None.
    batch: volumes super-resolved together at most (`upsample_volumes`).
    uncertainty: True (the default method) or a method of
      `jaxsr.dmri.app.uncertainty.METHODS`: also return a per-voxel uncertainty, the
      expected absolute error of the output in its units; None or False: not.
    progress: show a progress bar.
    record: a dict that receives what was decided: "psf" and, with `adapt`, "adapt".

  Returns:
    (output, output_affine): float32 (X', Y', Z'[, V]) in the input's units, and
    its (4, 4) voxel -> world mm affine; with `uncertainty`, (output, output_affine,
    uncertainty), the last shaped as the output.
  """
  if uncertainty is True:
    uncertainty = uncertainty_lib.DEFAULT_METHOD
  uncertainty = uncertainty or None
  data = np.asarray(data, np.float32)
  if data.ndim not in (3, 4) or 0 in data.shape:
    raise nifti.DataError(f"<array>: expected a non-empty 3D or 4D array, got shape {data.shape}")
  if not np.all(np.isfinite(data)):
    raise nifti.DataError("<array>: has non-finite voxels (NaN/inf)")
  check_magnitude(float(data.max()), "<array>")
  num_volumes = data.shape[3] if data.ndim == 4 else 1
  check_series_scaling([series_level(data[..., v] if data.ndim == 4 else data)
                        for v in range(num_volumes)], "<array>")
  if bvals is not None and np.size(bvals) != num_volumes:
    raise nifti.DataError(f"<bvals>: {np.size(bvals)} b-values for {num_volumes} volumes")
  grid = output_grid(data.shape[:3], affine, voxel_size=voxel_size, scale=scale, shape=shape,
                     max_output_voxels=max_output_voxels)
  t1_volume = (nifti.Volume(np.asarray(t1, np.float32), np.asarray(t1_affine, np.float64),
                            nib.Nifti1Header(), "<t1 array>") if t1 is not None else None)
  read = (lambda v: data[..., v]) if data.ndim == 4 else (lambda v: data)
  upsampler = load_upsampler(checkpoint)
  mask = lr_mask(mask, data.shape[:3], "<mask>")
  adapt = with_psf(adapt, psf)
  record = record if record is not None else {}
  if adapt is not None and adapt.steps:
    upsampler, psf, adapt = adapt_on_series(
        upsampler, read, num_volumes, bvals, np.asarray(affine, np.float64), grid.shape, psf,
        adapt, mask=mask, record=record, max_memory=max_memory, progress=progress)
  volumes = upsample_volumes(read, num_volumes, data.shape[:3], np.asarray(affine, np.float64),
                             grid.shape, upsampler, bvals=bvals, t1=t1_volume, mask=mask,
                             max_memory=max_memory, back_projection=back_projection, psf=psf,
                             batch=batch, uncertainty=uncertainty, progress=progress,
                             source="<bvals>", record=record)
  if uncertainty is None:
    out = np.stack(list(volumes), axis=-1)
    return (out if data.ndim == 4 else out[..., 0]), grid.affine
  outs, uncertainties = zip(*volumes)
  out, unc = np.stack(outs, axis=-1), np.stack(uncertainties, axis=-1)
  return ((out, grid.affine, unc) if data.ndim == 4
          else (out[..., 0], grid.affine, unc[..., 0]))


def with_psf(settings: adapt_lib.AdaptSettings | None, psf
              ) -> adapt_lib.AdaptSettings | None:
  """Adaptation settings that degrade with the input's PSF when it is known (a name or three;
  "auto" is first decided by `psf_before_adaptation`; None: a PSF drawn per crop)."""
  psf = acquisition.psf_option(psf)
  if settings is None or psf is None or psf == acquisition.AUTO or settings.psf is not None:
    return settings
  return dataclasses.replace(settings, psf=psf[0] if len(set(psf)) == 1 else psf)


