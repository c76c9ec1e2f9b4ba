"""Real-scan evaluation (`jaxsr.dmri.studies.real_scans`): the cases, their LR images and the
scores."""

import pathlib

import numpy as np
import pytest

from configs import real_scans as real_scans_config
from jaxsr.dmri.studies import real_scans


def test_cases_follow_what_each_scan_allows():
  cases = real_scans.make_cases(real_scans.TEST_SCANS, tuple(real_scans.DEGRADATIONS),
                                ("block",))
  pairs = {(c.scan, c.degradation) for c in cases}
  assert ("S0_10slices", "in-plane 3x") in pairs
  assert ("S0_10slices", "through-plane 2x") not in pairs  # its slices are not contiguous
  assert ("aniso_vox", "isotropic 2x") in pairs and ("aniso_vox", "through-plane 2x") in pairs
  assert ("small_64D_b0", "in-plane 2x") in pairs
  assert ("small_64D_b0", "in-plane 3x") not in pairs  # 10 / 3 < 4 LR voxels
  assert not set(real_scans.VALIDATION_SCANS) & {c.scan for c in cases}
  validation = real_scans.make_cases(real_scans.VALIDATION_SCANS,
                                     tuple(real_scans.DEGRADATIONS), ("block",))
  assert {c.degradation for c in validation if c.scan == "test_piesno"} == {
      "in-plane 2x", "in-plane 3x", "in-plane 4x"}  # one slice, 14 weightings: nothing through
  assert {c.degradation for c in validation if c.scan == "t1_coronal"} == {
      "in-plane 2x", "in-plane 3x", "in-plane 4x"}  # one slice
  assert "in-plane 4x" not in real_scans_config.get_config("test").degradations


def test_lr_images_are_the_scan_degraded_onto_block_centred_grids():
  case = real_scans.Case("aniso_vox", "in-plane 2x", "block")
  hr = real_scans.load_scan("aniso_vox")
  assert case.lr_shape == (29, 29, 24)
  np.testing.assert_allclose(case.lr(), hr.reshape(29, 2, 29, 2, 24).mean(axis=(1, 3)),
                             rtol=1e-5, atol=1e-3)
  affine = real_scans.lr_affine((2.0, 2.0, 1.0))
  # LR voxel (0, 0, 0) sits at the centre of HR voxels 0 and 1: HR index 0.5.
  np.testing.assert_allclose(affine @ [0, 0, 0, 1], [0.5, 0.5, 0, 1])
  affine = real_scans.lr_affine((2.0, 2.0, 1.0), real_scans.voxel_size("aniso_vox"))
  np.testing.assert_allclose(affine @ [0, 0, 0, 1], [2.0, 2.0, 0, 1], rtol=1e-6)
  np.testing.assert_allclose(np.abs(affine[:3, :3]).sum(axis=0), [8.0, 8.0, 5.0], rtol=1e-6)


def test_shell_means_come_from_the_gradient_table():
  b0 = real_scans.load_scan("small_64D_b0")
  dwi = real_scans.load_scan("small_64D_dwi")
  assert b0.shape == dwi.shape == (10, 10, 10)
  mask = real_scans.brain_mask("small_64D_b0")
  assert dwi[mask].mean() < 0.6 * b0[mask].mean()  # diffusion weighting attenuates the signal


def test_synthetic_scans_are_fixed_distinct_3d_volumes_with_a_brain():
  a = real_scans.load_scan("synthetic_0")
  np.testing.assert_array_equal(a, real_scans.rendered(real_scans.SYNTHETIC_ENTROPY, 0))
  assert not np.allclose(a, real_scans.load_scan("calibration_0"))  # another generator
  assert a.shape == real_scans.SYNTHETIC_SHAPE and np.all(np.isfinite(a)) and a.min() >= 0
  b = real_scans.load_scan("synthetic_1")
  assert not np.allclose(a, b)
  mask = real_scans.brain_mask("synthetic_1")
  assert 0.1 < mask.mean() < 0.95 and b[mask].mean() > 3 * b[~mask].mean()  # brain, background
  cases = real_scans.make_cases(("synthetic_0",), tuple(real_scans.DEGRADATIONS), ("kspace",))
  assert {c.degradation for c in cases} == set(real_scans.DEGRADATIONS)  # 3D, contiguous


def test_tricubic_beats_linear_on_a_smooth_case_and_scores_are_finite():
  case = real_scans.Case("aniso_vox", "in-plane 2x", "gaussian")
  scores = real_scans.score_case(real_scans.classical_methods(), case)
  assert all(np.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1 for s in scores.values())
  assert scores["tricubic"]["psnr"] > scores["linear"]["psnr"]


def test_configs_pick_disjoint_scans():
  test = real_scans_config.get_config("test")
  validation = real_scans_config.get_config("validation")
  synthetic = real_scans_config.get_config("synthetic")
  assert test.split == "test" and validation.split == "validation"
  assert synthetic.split == "synthetic" and synthetic.adapt_steps == 0
  splits = [set(v) for v in real_scans.SPLITS.values()]
  assert sum(map(len, splits)) == len(set().union(*splits))
  with pytest.raises(ValueError, match="unknown variant"):
    real_scans_config.get_config("train")


SCORES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results_real_scores"


@pytest.mark.parametrize("split", ["test", "validation", "synthetic"])
def test_the_committed_tables_are_rebuilt_from_the_committed_scores(split, tmp_path):
  """docs/results_real_scores holds each split's scores and the report made from them; the
  report, rebuilt from the scores alone (no scoring), is the same text, so the page's tables
  cannot drift from the scores."""
  config = real_scans_config.get_config(split)
  config.scores_from = str(SCORES / f"real_scans_{split}.json")
  text = real_scans.evaluate(config, tmp_path)
  committed = (SCORES / f"real_scans_{split}.md").read_text()
  strip = lambda t: t.split("\n", 1)[1]  # the first line names the model folder of the machine
  assert strip(text) == strip(committed)
  assert "over the best classical method" in text
  assert ("model_adapt" in text) == (split != "synthetic")  # the synthetic split: model alone
