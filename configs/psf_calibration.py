"""`--psf auto`'s thresholds for a model, fitted on rendered volumes of known PSF
(`jaxsr.dmri.studies.psf_calibration`, docs/results_real.md).

  python evaluate.py --config configs/psf_calibration.py --workdir DIR \\
      [--config.checkpoint=RUN_OR_FOLDER --config.checkpoint_step=N] [--config.write_to=FOLDER]

Variants: `default` (the 8 calibration volumes, every degradation, block / Gaussian /
k-space: 120 cases), `smoke` (one volume, one factor: tests).
"""

import ml_collections

from jaxsr.dmri.app.settings import DEFAULT_MAX_MEMORY
from jaxsr.dmri.studies.real_scans import CALIBRATION_SCANS, DEGRADATIONS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"unknown variant {variant!r}: use default or smoke")
  c = ml_collections.ConfigDict()
  c.task = "psf_calibration"
  c.variant = variant
  c.seed = 0
  c.checkpoint = ""  # a run directory or exported folder; "" = the shipped general model
  c.checkpoint_step = 0  # of a run directory; 0 = its latest
  c.write_to = ""  # an exported folder whose manifest receives the thresholds
  c.scans = CALIBRATION_SCANS
  c.degradations = tuple(DEGRADATIONS)
  c.psfs = ("block", "gaussian", "kspace")
  c.max_memory = DEFAULT_MAX_MEMORY
  if variant == "smoke":
    c.scans = CALIBRATION_SCANS[:1]
    c.degradations = ("in-plane 2x",)
  return c
