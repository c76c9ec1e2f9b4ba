"""Real-scan evaluation of an arbitrary-scale model (`jaxsr.dmri.studies.real_scans`,
docs/results_real.md).

  python evaluate.py --config configs/real_scans.py --workdir DIR          # test scans: the table
  python evaluate.py --config configs/real_scans.py:validation --workdir DIR

Variants: `test` (default: the dipy scans of the table, scored once), `validation`
(the scans that choose checkpoints and options), `synthetic` (volumes rendered like the
training images from held-out generators: a second validation set, 3D throughout; model
alone, `--psf auto`), `smoke` (one small case, tests).
`--config.checkpoint=RUN_DIR` scores another model (default "": the shipped one),
`--config.checkpoint_step=N` one of its checkpoints,
`--config.scores_from=docs/results_real_scores/real_scans_test.json` rebuilds the committed
tables without scoring.
"""

import ml_collections

from jaxsr.dmri.app.adapt import AdaptSettings
from jaxsr.dmri.degradation.psf import PSFS
from jaxsr.dmri.studies.real_scans import DEGRADATIONS
from jaxsr.dmri.app.settings import DEFAULT_BACK_PROJECTION, DEFAULT_PSF


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "test"
  if variant not in ("test", "validation", "synthetic", "smoke"):
    raise ValueError(f"unknown variant {variant!r}: use test, validation, synthetic or smoke")
  c = ml_collections.ConfigDict()
  c.task = "real_scans"
  c.variant = variant
  c.split = variant if variant in ("validation", "synthetic") else "test"
  c.seed = 0
  c.checkpoint = ""  # a run directory or exported folder; "" = the shipped general model
  c.checkpoint_step = 0  # of a run directory; 0 = its latest
  c.scores_from = ""  # a real_scans_<split>.json: rebuild its tables without scoring
  c.psf_calibration = ""  # a psf_calibration.json: `--psf auto`'s thresholds for the model
  c.degradations = tuple(d for d in DEGRADATIONS if d != "in-plane 4x")  # the test table's
  c.psfs = tuple(p for p in PSFS if p != "cubic")  # acquisition-like: block, gaussian, kspace
  c.back_projection = (DEFAULT_BACK_PROJECTION,)  # a model column per value (iterations)
  c.psf_modes = (DEFAULT_PSF,)  # a model column per --psf (training: the training degradation)
  c.adapt_steps = 100  # columns with --adapt STEPS (0: none), one per learning rate
  c.adapt_learning_rates = (AdaptSettings.learning_rate,)
  if variant == "validation":  # every degradation the validation scans allow
    c.degradations = tuple(DEGRADATIONS)
    c.psf_modes = ("training", DEFAULT_PSF)  # what chose DEFAULT_PSF
  if variant == "synthetic":
    c.degradations = tuple(DEGRADATIONS)
    c.adapt_steps = 0
  if variant == "smoke":
    c.degradations = ("in-plane 2x",)
    c.psfs = ("block",)
    c.adapt_steps = 5
  return c
