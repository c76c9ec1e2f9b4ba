"""`--adapt` for a whole series: the checks before it, the PSF decided on the unadapted model,
the volume adapted to, the decision recorded (the algorithm: `jaxsr.dmri.app.adapt`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Sequence

import numpy as np

from jaxsr.dmri.app import adapt as adapt_lib
from jaxsr.dmri.app import pretrained
from jaxsr.dmri.app.model import Upsampler
from jaxsr.dmri.app.settings import UpsampleSettings
from jaxsr.dmri.app.volumes import intensity_reference, upsample_volumes
from jaxsr.dmri.data import btable
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.degradation import psf as psf_lib
from jaxsr.dmri.inference.memory import MemoryPlan
from jaxsr.errors import UpsampleError


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


def with_psf(settings: adapt_lib.AdaptSettings | None, psf
              ) -> adapt_lib.AdaptSettings | None:
  """Adaptation settings that degrade with the input's PSF when it is known (a name or three;
  "auto" is first decided by `psf_before_adaptation`; None: a PSF drawn per crop)."""
  psf = acquisition.psf_option(psf)
  if settings is None or psf is None or psf == acquisition.AUTO or settings.psf is not None:
    return settings
  return dataclasses.replace(settings, psf=psf[0] if len(set(psf)) == 1 else psf)


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


def raw_output(upsampler: Upsampler, volume: np.ndarray, lr_affine: np.ndarray,
               hr_shape: Sequence[int], settings: UpsampleSettings, *,
               mask: np.ndarray | None = None, plan: MemoryPlan | None = None,
               record: dict | None = None) -> np.ndarray:
  """The model's output for `volume` before any back-projection (input units); `record` gets
  what was decided ("psf" with `settings.psf` "auto")."""
  (out,) = upsample_volumes(  # run to its end: one volume
      lambda _: volume, 1, volume.shape, lr_affine, hr_shape, upsampler,
      dataclasses.replace(settings, back_projection=0, uncertainty=None), mask=mask, plan=plan,
      record=record if record is not None else {})
  return out


def psf_before_adaptation(upsampler: Upsampler, volume: np.ndarray, lr_affine: np.ndarray,
                          hr_shape: Sequence[int], settings: UpsampleSettings, *,
                          mask: np.ndarray | None = None, plan: MemoryPlan | None = None,
                          record: dict) -> tuple[str | tuple[str, str, str] | None,
                                                 np.ndarray | None]:
  """(`settings.psf`, None), or with "auto" (the per-axis PSF decided on the model's output for
  `volume` before any adaptation, that output): what adaptation then trains with and the
  output is made consistent under (an adapted model's output would decide it on what
  adaptation changed); record["psf"] says which."""
  if settings.psf != acquisition.AUTO:
    return settings.psf, None
  decided = {}
  raw = raw_output(upsampler, volume, lr_affine, hr_shape, settings, mask=mask, plan=plan,
                   record=decided)
  if "psf" not in decided:  # a blank volume is never run through the model
    raise adapt_lib.AdaptError("the scan has no signal to adapt to")
  record["psf"] = {**decided["psf"],
                   "decided": "on the unadapted model's output for the volume adapted to, "
                              "before adapting"}
  return tuple(decided["psf"]["per_axis"]), raw


def consistency_check(original: Upsampler, adapted: Upsampler, volume: np.ndarray,
                      lr_affine: np.ndarray, hr_shape: Sequence[int], settings: UpsampleSettings,
                      psf, *, raw_before: np.ndarray | None = None,
                      mask: np.ndarray | None = None, plan: MemoryPlan | None = None
                      ) -> adapt_lib.ConsistencyCheck:
  """How well each model's raw output for `volume` reproduces it under `psf` (the scan's
  decided PSF; None: the training degradation's): `jaxsr.dmri.app.adapt.ConsistencyCheck`.
  `raw_before`: the original model's output, where it was made already."""
  fixed = dataclasses.replace(settings, psf=psf)  # decided: not decided again

  def residual(upsampler, raw):
    raw = raw if raw is not None else raw_output(upsampler, volume, lr_affine, hr_shape, fixed,
                                                 mask=mask, plan=plan)
    return acquisition.consistency_residual(raw, volume, psf)
  return adapt_lib.ConsistencyCheck(residual(original, raw_before), residual(adapted, None))


def adaptation_volume(read: Callable[[int], np.ndarray], num_volumes: int,
                      bvals: np.ndarray | None) -> tuple[np.ndarray, list[int]]:
  """(the LR volume a series is adapted to, the indices of the volumes it is made of): the
  mean of the b0s where b-values name any, else the first volume.

  The b0s have the most signal of a diffusion series and share its anatomy; averaging k of
  them divides the noise by about √k, so adaptation learns the scan, not its noise. One
  adaptation then serves every volume of the series.
  """
  indices = ([int(i) for i in btable.b0_indices(bvals, required=False)]
             if bvals is not None else [])
  if not indices:
    return read(0), [0]
  return np.mean([read(i) for i in indices], axis=0, dtype=np.float32), indices


def adapt_on_series(upsampler: Upsampler, read: Callable[[int], np.ndarray], num_volumes: int,
                    bvals: np.ndarray | None, lr_affine: np.ndarray, hr_shape: Sequence[int],
                    settings: UpsampleSettings, *, mask: np.ndarray | None, record: dict,
                    plan: MemoryPlan | None = None, progress: bool = False
                    ) -> tuple[Upsampler, UpsampleSettings]:
  """`--adapt` (`settings.adapt`) once for a whole series, on `adaptation_volume`: the PSF
  decided first (`psf_before_adaptation`), adaptation with it (`adapt_upsampler`), then, if
  kept, the check at the requested scale (`consistency_check`), all written to `record`
  ("psf", "adapt", with the volumes adapted to); every volume then uses the result.

  Returns (the upsampler to use, `settings` with the PSF for the series and the adaptation
  settings it trained with).
  """
  volume, indices = adaptation_volume(read, num_volumes, bvals)
  prepare_adaptation(upsampler, volume.shape, hr_shape, settings.adapt)
  psf, raw_before = psf_before_adaptation(upsampler, volume, lr_affine, hr_shape, settings,
                                          mask=mask, plan=plan, record=record)
  adapt = with_psf(settings.adapt, psf)
  original = upsampler
  upsampler, result = adapt_upsampler(upsampler, volume, volume.shape, hr_shape, adapt,
                                      mask=mask, progress=progress)
  if result.kept:  # the last check, at the requested scale on the whole scan
    check = consistency_check(original, upsampler, volume, lr_affine, hr_shape, settings, psf,
                              raw_before=raw_before, mask=mask, plan=plan)
    result = result.after_consistency(check, original.params)
    upsampler = upsampler if result.kept else original
  record["adapt"] = {**result.record(), "volumes": indices,
                     "psf": list(psf_lib.per_axis(adapt.psf)) if adapt.psf else None}
  return upsampler, dataclasses.replace(settings, psf=psf, adapt=adapt)


def save_adapted_model(upsampler: Upsampler, folder: str | os.PathLike,
                       settings: adapt_lib.AdaptSettings, source: str, kept: bool = True
                       ) -> pathlib.Path:
  """Exports the parameters used after adaptation (`jaxsr.dmri.app.pretrained` format; the
  original ones, with "kept": false in the manifest, where adaptation was not kept);
  `--checkpoint FOLDER` reuses them, with the `--psf auto` thresholds of the model adapted
  (fitted for its weights before adaptation: the nearest there are)."""
  extra = {"psf_thresholds": upsampler.psf_thresholds} if upsampler.psf_thresholds else {}
  return pretrained.export(folder, upsampler.config, upsampler.params, step=upsampler.step,
                           source=upsampler.run_dir, adapted_on=source,
                           adapt={**dataclasses.asdict(settings), "kept": kept}, **extra)
