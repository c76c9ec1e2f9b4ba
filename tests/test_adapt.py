"""Self-supervised adaptation (`jaxsr.dmri.app.adapt`) and `jaxsr upsample --adapt`."""

import json

import jax
import nibabel as nib
import numpy as np
import pytest

from configs import general
from jaxsr.dmri.app import adapt, pretrained
from jaxsr.dmri.degradation import psf
from jaxsr.dmri.models import build_model, init_params
from jaxsr.dmri.app.model import Upsampler
from tests.cli_helpers import BUDGET, run_cli


@pytest.fixture(scope="module")
def tiny_model():
  config = general.get_config("smoke")
  model = build_model(config.model)
  return config, model, init_params(model, jax.random.key(0), 1, (4, 4, 4))


def smooth_scan(shape=(20, 20, 8), seed=0) -> np.ndarray:
  """A smooth positive test volume with edges: blurred blocks of random intensity."""
  rng = np.random.default_rng(seed)
  blocks = rng.random((5, 5, 2))
  scan = np.kron(blocks, np.ones((4, 4, 4)))[: shape[0], : shape[1], : shape[2]]
  return scan.astype(np.float32) + 0.2


def test_crop_shapes_fit_the_scan_and_too_small_scans_are_refused():
  hr, lr = adapt.crop_shapes((20, 20, 8), (2.0, 2.0, 1.0), 8)
  assert lr == (8, 8, 8) and hr == (16, 16, 8)
  hr, lr = adapt.crop_shapes((58, 58, 24), (2.0, 2.0, 2.5), 8)
  assert lr == (8, 8, 8) and hr == (16, 16, 20)
  hr, lr = adapt.crop_shapes((12, 13, 3), (3.0, 3.0, 1.0), 8)
  assert lr == (4, 4, 3) and hr == (12, 12, 3)  # undegraded axes may be thin
  with pytest.raises(adapt.AdaptError, match="axis 2: too few"):
    adapt.crop_shapes((10, 10, 7), (1.0, 1.0, 2.0), 8)  # 3 LR voxels along the degraded axis


def test_sampler_crops_are_degraded_with_the_given_psf():
  scan = smooth_scan()
  settings = adapt.AdaptSettings(psf="block")
  split = adapt.held_out_split(scan, (2.0, 2.0, 1.0), settings.lr_patch_size)
  sampler = adapt.AdaptSampler(scan, (2.0, 2.0, 1.0), settings, split)
  batch = sampler(np.random.default_rng(0))
  hr_shape, lr_shape = split.hr_shape, split.lr_shape
  assert batch["hr"].shape == (4, *hr_shape) and batch["lr"].shape == (4, *lr_shape)
  for hr, lr in zip(batch["hr"], batch["lr"]):
    blocks = hr.reshape(lr_shape[0], 2, lr_shape[1], 2, lr_shape[2]).mean(axis=(1, 3))
    np.testing.assert_allclose(lr, blocks, atol=1e-5)


def test_training_crops_never_reach_into_the_held_out_slab():
  scan = smooth_scan((24, 20, 8))
  split = adapt.held_out_split(scan, (2.0, 2.0, 1.0), 4)
  marked = np.full(scan.shape, 1.0, np.float32)
  marked[split.region("heldout")] = -1.0  # every voxel of the slab is negative
  settings = adapt.AdaptSettings(batch_size=64, lr_patch_size=4, psf="block")
  train = adapt.AdaptSampler(marked, (2.0, 2.0, 1.0), settings, split)(np.random.default_rng(0))
  held = adapt.AdaptSampler(marked, (2.0, 2.0, 1.0), settings, split,
                            part="heldout")(np.random.default_rng(0))
  assert train["hr"].min() > 0 and held["hr"].max() < 0
  size = split.heldout.stop - split.heldout.start
  assert size == max(24 // 4, split.hr_shape[0]) or split.axis != 0


def test_scans_too_small_to_hold_a_part_out_are_refused():
  with pytest.raises(adapt.AdaptError, match="too small to hold part of it out"):
    adapt.held_out_shapes((12, 12, 1), (3.0, 3.0, 1.0), 8)  # one crop fills x and y
  axis, size, hr, lr = adapt.held_out_shapes((64, 64, 10), (2.0, 2.0, 1.0), 8)
  assert size == 16 and hr[axis] == 16 and lr == (8, 8, 8)


def test_adaptation_lowers_the_loss_on_a_tiny_volume_and_is_kept(tiny_model):
  config, model, params = tiny_model
  settings = adapt.AdaptSettings(steps=60, batch_size=2, lr_patch_size=4, learning_rate=1e-3,
                                 psf="block", patience=10)
  result = adapt.adapt_params(model, params, smooth_scan(), (2.0, 2.0, 1.0), settings)
  assert result.kept and result.best_step > 0 and len(result.history) == result.steps_run
  assert result.loss_after < 0.8 * result.loss_before
  # The loss on crops the adaptation never drew (another seed, anywhere in the scan) falls too.
  split = adapt.held_out_split(smooth_scan(), (2.0, 2.0, 1.0), 4)
  others = adapt.AdaptSampler(smooth_scan(), (2.0, 2.0, 1.0),
                              adapt.AdaptSettings(batch_size=16, lr_patch_size=4, psf="block"),
                              split)(np.random.default_rng(99))
  before = adapt.adapt_loss(model, params, others["hr"], others["lr"], 0.0)
  after = adapt.adapt_loss(model, result.params, others["hr"], others["lr"], 0.0)
  assert float(after) < 0.8 * float(before)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), params, result.params)
  assert all(jax.tree_util.tree_leaves(changed))  # the caller's params were copied, not used
  assert result.record()["kept"] is True and "adaptation kept" in result.message


def test_adaptation_that_hurts_is_not_kept_and_stops_early(tiny_model):
  config, model, params = tiny_model
  trained = adapt.adapt_params(model, params, smooth_scan(), (2.0, 2.0, 1.0),
                               adapt.AdaptSettings(steps=60, batch_size=2, lr_patch_size=4,
                                                   learning_rate=1e-3, psf="block",
                                                   patience=10)).params
  # From a model that already fits the scan, a learning rate of 1 diverges: the held-out loss
  # rises, training stops after `patience` evaluations and the weights are left as they were.
  settings = adapt.AdaptSettings(steps=200, batch_size=2, lr_patch_size=4, learning_rate=1.0,
                                 psf="block", eval_every=5, patience=3, check_transfer=False)
  result = adapt.adapt_params(model, trained, smooth_scan(), (2.0, 2.0, 1.0), settings)
  assert not result.kept and result.params is trained and result.transfer is None
  assert result.steps_run < 200 and result.best_step == 0
  assert result.loss_after == result.loss_before
  assert max(v for _, v in result.heldout_history[1:]) > result.heldout_history[0][1]
  assert "not kept" in result.message and result.record()["kept"] is False


def test_the_transfer_check_stops_an_adaptation_that_hurts_one_scale_up(tiny_model):
  config, model, params = tiny_model
  settings = adapt.AdaptSettings(steps=60, batch_size=2, lr_patch_size=4, learning_rate=1.0,
                                 psf="block", eval_every=5, patience=3)
  result = adapt.adapt_params(model, params, smooth_scan(), (2.0, 2.0, 1.0), settings)
  assert not result.kept and result.params is params and result.steps_run == 0
  assert not result.transfer.passed and result.transfer.loss_before is not None
  assert "did not help one scale up" in result.message
  assert result.record()["transfer_check"]["passed"] is False


def test_a_scan_too_small_to_check_is_not_adapted(tiny_model):
  config, model, params = tiny_model
  settings = adapt.AdaptSettings(steps=5, batch_size=2, lr_patch_size=4, psf="block")
  # 14 x 14 voxels at 2x: adaptable (crops of 4 LR voxels need 8), but degraded once it has
  # 7, too few for such crops one level down.
  result = adapt.adapt_params(model, params, smooth_scan((14, 14, 8)), (2.0, 2.0, 1.0), settings)
  assert not result.kept and result.params is params and result.steps_run == 0
  assert "too small to check" in result.message


def test_zero_steps_keep_the_parameters_and_bad_settings_fail(tiny_model):
  config, model, params = tiny_model
  result = adapt.adapt_params(model, params, smooth_scan(), (2.0, 2.0, 1.0),
                              adapt.AdaptSettings(steps=0))
  assert result.params is params and result.history == [] and not result.kept
  with pytest.raises(psf.PSFError):
    adapt.adapt_params(model, params, smooth_scan(), (2, 2, 1), adapt.AdaptSettings(5, psf="x"))
  with pytest.raises(adapt.AdaptError, match="no signal"):
    adapt.adapt_params(model, params, np.zeros((20, 20, 8)), (2, 2, 1), adapt.AdaptSettings(5))


THRESHOLDS = {"in-plane": 1.1, "through-plane": 1.2, "isotropic": 1.05}  # `--psf auto`'s


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
  config, model, params = tiny_model
  return pretrained.export(tmp_path_factory.mktemp("tiny"), config, params, step=0, source="test",
                           psf_thresholds=THRESHOLDS)


@pytest.mark.slow
def test_command_adapts_saves_and_reuses_the_adapted_model(exported, tmp_path, capsys):
  scan = tmp_path / "scan.nii.gz"
  nib.save(nib.Nifti1Image(smooth_scan() * 1000, np.diag([2.0, 2.0, 3.0, 1.0])), scan)
  out, saved = tmp_path / "out.nii.gz", tmp_path / "adapted"
  code, err = run_cli("upsample", "--checkpoint", exported, "--dwi", scan, "--scale", "2,2,1",
                      "--adapt", "3", "--psf", "block", "--save-adapted", saved, "--out", out,
                      "--report", tmp_path / "out.html", "--quiet", "--max-memory", BUDGET)
  assert code == 0, err
  image = nib.load(out)
  assert image.shape == (40, 40, 8) and np.all(np.isfinite(image.get_fdata()))
  manifest = json.loads((saved / "manifest.json").read_text())
  assert manifest["adapt"]["steps"] == 3 and manifest["adapt"]["psf"] == "block"
  assert manifest["psf_thresholds"] == THRESHOLDS  # the adapted model's, for its reuse
  record = json.loads((tmp_path / "out.json").read_text())
  assert record["adapt"]["volumes"] == [0] and record["psf"]["per_axis"] == ["block"] * 3
  assert record["adapt"]["kept"] is manifest["adapt"]["kept"]
  decision = f"adaptation {'kept' if record['adapt']['kept'] else 'not kept'}"
  assert capsys.readouterr().out.startswith(decision)  # the one line before what was written
  # The report shows the decision, both held-out losses and the held-out curve.
  page = (tmp_path / "out.html").read_text()
  assert "Adaptation to this scan" in page and decision in page
  assert f"{record['adapt']['heldout_loss_before']:.4g}" in page
  assert page.count("data:image/png;base64,") == 2  # the volume's planes and the curve
  adapted = Upsampler.from_checkpoint(saved)
  original = Upsampler.from_checkpoint(exported)
  differs = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), adapted.params,
                                   original.params)
  assert any(jax.tree_util.tree_leaves(differs))


def test_bad_adapt_requests_fail_with_one_line_exit_2_and_no_output(exported, tmp_path):
  out = tmp_path / "out.nii.gz"
  small = tmp_path / "small.nii.gz"
  nib.save(nib.Nifti1Image(np.ones((10, 10, 3), np.float32), np.eye(4)), small)
  cases = {
      "too few": ["--dwi", small, "--scale", "1,1,2", "--adapt", "5"],
      "unknown PSF 'gauss'": ["--dwi", small, "--scale", "2", "--psf", "gauss"],
      "needs --adapt": ["--dwi", small, "--scale", "2", "--save-adapted", tmp_path / "a"],
  }
  for expected, args in cases.items():
    code, err = run_cli("upsample", "--checkpoint", exported, *args, "--out", out, "--quiet",
                        "--max-memory", BUDGET)
    assert code == 2 and expected in err, (expected, err)
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_an_adaptation_whose_output_explains_the_scan_worse_is_not_kept(exported, monkeypatch):
  """The last check, at the requested scale: adapted weights whose raw output reproduces the
  scan (degraded by its PSF) less well than the model's are dropped, whatever the held-out
  crops said; the record and the message say why."""
  import dataclasses

  import jaxsr
  from jaxsr.dmri.app import adaptation

  model = Upsampler.from_checkpoint(exported)
  real = adaptation.adapt_upsampler

  def made_worse(upsampler, *args, **kwargs):  # the crops' checks "pass", the weights are noise
    _, result = real(upsampler, *args, **kwargs)
    rng = np.random.default_rng(0)
    noisy = jax.tree_util.tree_map(
        lambda x: x + 0.5 * rng.standard_normal(x.shape).astype(x.dtype), upsampler.params)
    return (upsampler.with_params(noisy, "noise"),
            dataclasses.replace(result, kept=True, params=noisy, transfer=None))
  monkeypatch.setattr(adaptation, "adapt_upsampler", made_worse)
  scan, affine = smooth_scan() * 1000, np.diag([2.0, 2.0, 3.0, 1.0])
  budget = 32 * 2**30
  record = {}
  out, _ = jaxsr.upsample(scan, affine, model, scale=(2, 2, 1), psf="block",
                          adapt=adapt.AdaptSettings(steps=3), record=record, max_memory=budget)
  plain, _ = jaxsr.upsample(scan, affine, model, scale=(2, 2, 1), psf="block", max_memory=budget)
  check = record["adapt"]["consistency_check"]
  assert record["adapt"]["kept"] is False and check["passed"] is False
  assert check["residual_after"] > check["residual_before"] > 0
  assert "reproduces the scan less well" in record["adapt"]["message"]
  np.testing.assert_array_equal(out, plain)  # the model as it was


def test_the_consistency_check_passes_when_the_output_explains_the_scan_as_well():
  kept = adapt.ConsistencyCheck(0.02, 0.02)
  assert kept.passed and kept.record() == {"residual_before": 0.02, "residual_after": 0.02,
                                           "passed": True}
  assert not adapt.ConsistencyCheck(0.02, 0.021).passed
