"""The model a user runs (`Upsampler`: a training run's checkpoint, an exported folder or the
shipped general model) and the T1 it may take.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from jaxsr import anatomy, geometry, nifti
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.app import pretrained
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.degradation.degrade import degrade
from jaxsr.dmri.models import is_implicit


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
    psf_thresholds: `--psf auto`'s thresholds fitted for these weights (an exported
      folder's manifest, `jaxsr.dmri.studies.psf_calibration`), or None: the defaults
      (`jaxsr.dmri.degradation.acquisition`).
  """
  model: object
  params: dict
  in_channels: int
  run_dir: str
  step: int
  config: ml_collections.ConfigDict | None = None
  psf_thresholds: dict | None = None

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

    thresholds = None
    if pretrained.is_exported(run_dir):
      config, model, params, manifest = pretrained.load(run_dir)
      step = int(manifest.get("step", 0))
      thresholds = manifest.get("psf_thresholds")
      if thresholds is not None:
        try:
          thresholds = acquisition.check_thresholds(thresholds)
        except (ValueError, TypeError, AttributeError) as error:
          raise pretrained.PretrainedError(f"{run_dir}: manifest.json psf_thresholds: {error}")
    else:
      run = load_run(run_dir, step, family_steps=[step_lib])
      config, model, params, step = run.config, run.model, run.variables["params"], run.step
    kind = config.model.kind
    if not is_implicit(kind):
      raise CheckpointError(f"{run_dir}: a fixed-scale {kind!r} model; upsampling to any voxel "
                            "size needs an arbitrary-scale model (model.kind csr_dmri)")
    return cls(model, params, int(config.model.in_channels), os.fspath(run_dir), step, config,
               thresholds)

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


def load_upsampler(checkpoint: str | os.PathLike | Upsampler | None, step: int | None = None
                   ) -> Upsampler:
  """An Upsampler as given, from a run (checkpoint `step`, default the latest) or exported
  folder, or (None) the shipped general model."""
  if isinstance(checkpoint, Upsampler):
    return checkpoint
  return (Upsampler.general() if checkpoint is None
          else Upsampler.from_checkpoint(checkpoint, step))


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
