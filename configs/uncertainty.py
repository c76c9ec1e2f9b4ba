"""Rank correlation and calibration of the uncertainty map on real scans
(`jaxsr.dmri.studies.uncertainty_study`, docs/uncertainty.md).

  python evaluate.py --config configs/uncertainty.py:validation --workdir DIR  # chooses
  python evaluate.py --config configs/uncertainty.py --workdir DIR             # test, once

Variants: `test` (default: the dipy test scans of docs/results_real.md), `validation` (the
scans that choose the method and fit its calibration), `smoke` (one small case, tests).
Scoring both splits in one DIR draws the calibration figure with both.
"""

import ml_collections

from configs import real_scans


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "test"
  cases = real_scans.get_config(variant)  # the same cases as the real-scan tables
  c = ml_collections.ConfigDict()
  c.task = "uncertainty"
  c.variant = variant
  c.split = cases.split
  c.seed = 0
  c.checkpoint = ""  # "" = the shipped general model
  c.scores_from = ""  # an uncertainty_<split>.json: the report again without scoring
  c.scans = ("small_64D_b0",) if variant == "smoke" else ()  # (): the split's scans
  c.degradations = cases.degradations
  c.psfs = cases.psfs
  c.max_memory = 4 * 2**30  # bytes for the whole process, as `jaxsr upsample --max-memory`
  return c
