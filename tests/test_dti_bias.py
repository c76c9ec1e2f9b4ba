"""Signed DTI errors of a model's 4D output (`jaxsr.dmri.studies.dti_bias`)."""

import json

import numpy as np
import pytest

from configs import dti_general
from jaxsr.dmri.studies import dti_bias
from jaxsr.dmri.inference.memory import resident_bytes


def test_signed_errors_are_output_minus_truth_inside_the_region():
  truth_fa, truth_md = np.full((4, 4, 4), 0.5), np.full((4, 4, 4), 1e-3)
  region = np.zeros((4, 4, 4), bool)
  region[:2] = True
  fa = truth_fa + np.where(region, 0.1, -0.3)  # outside the region it is not counted
  md = truth_md + np.where(region, -2e-4, 0.0)
  errors = dti_bias.signed_errors(fa, md, truth_fa, truth_md, region)
  np.testing.assert_allclose([errors["fa_bias"], errors["fa_rmse"]], [0.1, 0.1], rtol=1e-9)
  np.testing.assert_allclose([errors["md_bias"], errors["md_rmse"]], [-0.2, 0.2], rtol=1e-9)


@pytest.mark.slow
def test_the_evaluation_reports_both_methods_in_both_tissues(tmp_path):
  text = dti_general_evaluate(tmp_path)
  saved = json.loads((tmp_path / "eval" / "dti_bias.json").read_text())
  methods = {(r["method"], r["tissue"]) for r in saved["rows"]}
  assert methods == {(m, t) for m in ("tricubic", "model") for t in dti_bias.TISSUES}
  assert all(np.isfinite(r[k]) for r in saved["rows"] for k in ("fa_bias", "md_rmse"))
  assert text.count("| model |") == 2 and text.count("| tricubic |") == 2


def dti_general_evaluate(workdir):
  config = dti_general.get_config("smoke")
  config.data.cache_dir = str(workdir / "cache")
  # The budget counts the whole process; a test worker has grown past a fresh command's size.
  config.max_memory = resident_bytes() + (3 << 30)
  return dti_bias.evaluate(config, workdir)
