"""`--psf auto`'s per-model thresholds (`jaxsr.dmri.studies.psf_calibration`)."""

import json
import shutil

import numpy as np
import pytest

from configs import psf_calibration as calibration_config
from jaxsr.dmri.app import pretrained
from jaxsr.dmri.app.model import Upsampler
from jaxsr.dmri.app.upsample import upsample
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.studies import psf_calibration, real_scans

BUDGET = 32 * 2**30  # bytes: a test worker's process holds more than a command's

def test_samples_keep_only_groups_whose_axes_were_degraded():
  rows = [{"scan": "s", "degradation": "through-plane 2x", "psf": "kspace",
           "ratios": {"in-plane": 0.5, "through-plane": 1.1}},
          {"scan": "s", "degradation": "in-plane 2x", "psf": "block",
           "ratios": {"in-plane": 1.3}}]
  assert psf_calibration.samples(rows) == [("through-plane", 1.1, True), ("in-plane", 1.3, False)]
  assert psf_calibration.misclassified(psf_calibration.samples(rows),
                                       {"in-plane": 1.5, "through-plane": 1.0}) == {
      "through-plane": [1, 1], "in-plane": [1, 1]}


def test_fitted_thresholds_travel_in_the_manifest_to_auto(tmp_path):
  folder = tmp_path / "model"
  shutil.copytree(pretrained.general_model_dir(), folder)
  config = calibration_config.get_config("smoke")
  config.checkpoint, config.write_to = str(folder), str(folder)
  config.max_memory = BUDGET
  text = psf_calibration.evaluate(config, tmp_path / "run")
  record = json.loads((tmp_path / "run" / "eval" / "psf_calibration.json").read_text())
  assert len(record["rows"]) == 3 and "| in-plane |" in text  # block, Gaussian, k-space
  thresholds = json.loads((folder / "manifest.json").read_text())["psf_thresholds"]
  assert thresholds == record["thresholds"] and set(thresholds) == set(acquisition.ROLES)
  # The in-plane cut decides the smoke's three cases no worse than the defaults do, and
  # separates its k-space case from its two spatial ones wherever their ratios allow.
  points = psf_calibration.samples(record["rows"])
  fitted = psf_calibration.misclassified(points, thresholds)["in-plane"]
  default = psf_calibration.misclassified(points, acquisition.DEFAULT_THRESHOLDS)["in-plane"]
  assert fitted[0] == 3 and fitted[1] <= default[1]
  ratios = {r["psf"]: r["ratios"]["in-plane"] for r in record["rows"]}
  assert (fitted[1] == 0) == (ratios["kspace"] < min(ratios["block"], ratios["gaussian"]))
  model = Upsampler.from_checkpoint(folder)
  assert model.psf_thresholds == thresholds
  pretrained.load(folder)  # the parameters' checksum still holds
  case = real_scans.Case("calibration_0", "in-plane 2x", "kspace")
  decided = {}
  upsample(case.lr(), case.lr_affine(), model, shape=case.hr_shape, psf="auto",
           record=decided, max_memory=BUDGET)
  assert decided["psf"]["thresholds"] == thresholds
  assert np.isclose(acquisition.kspace_ratio(decided["psf"]["residuals"]["in-plane"]),
                    ratios["kspace"], rtol=1e-5)
  with pytest.raises(ValueError, match="not an exported model folder"):
    psf_calibration.write_to_manifest(tmp_path, thresholds, record["rows"])
  manifest = json.loads((folder / "manifest.json").read_text())
  manifest["psf_thresholds"] = {"in-plane": -1.0}
  (folder / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(pretrained.PretrainedError, match="psf_thresholds"):
    Upsampler.from_checkpoint(folder)
