"""Self-supervised adaptation (`jaxsr.dmri.adapt`) and `jaxsr upsample --adapt`."""

import json

import jax
import nibabel as nib
import numpy as np
import pytest

from configs import general
from jaxsr.dmri import adapt, pretrained, psf
from jaxsr.dmri.models import build_model, init_params
from jaxsr.dmri.upsample import Upsampler
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
  sampler = adapt.AdaptSampler(scan, (2.0, 2.0, 1.0), adapt.AdaptSettings(psf="block"))
  batch = sampler(np.random.default_rng(0))
  assert batch["hr"].shape == (4, 16, 16, 8) and batch["lr"].shape == (4, 8, 8, 8)
  for hr, lr in zip(batch["hr"], batch["lr"]):
    np.testing.assert_allclose(lr, hr.reshape(8, 2, 8, 2, 8).mean(axis=(1, 3)), atol=1e-5)


def test_adaptation_lowers_the_loss_on_a_tiny_volume(tiny_model):
  config, model, params = tiny_model
  settings = adapt.AdaptSettings(steps=60, batch_size=2, lr_patch_size=4, learning_rate=1e-3,
                                 psf="block")
  adapted, history = adapt.adapt_params(model, params, smooth_scan(), (2.0, 2.0, 1.0), settings)
  assert len(history) == 60
  # The loss on crops of the same scan that the adaptation never drew (another seed) falls.
  held_out = adapt.AdaptSampler(smooth_scan(), (2.0, 2.0, 1.0),
                                adapt.AdaptSettings(batch_size=16, lr_patch_size=4, psf="block",
                                                    seed=99))(np.random.default_rng(99))
  before = adapt.adapt_loss(model, params, held_out["hr"], held_out["lr"], 0.0)
  after = adapt.adapt_loss(model, adapted, held_out["hr"], held_out["lr"], 0.0)
  assert float(after) < 0.8 * float(before)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), params, adapted)
  assert all(jax.tree_util.tree_leaves(changed))  # the caller's params were copied, not used


def test_zero_steps_return_the_parameters_and_bad_settings_fail(tiny_model):
  config, model, params = tiny_model
  same, history = adapt.adapt_params(model, params, smooth_scan(), (2.0, 2.0, 1.0),
                                     adapt.AdaptSettings(steps=0))
  assert same is params and history == []
  with pytest.raises(psf.PSFError):
    adapt.adapt_params(model, params, smooth_scan(), (2, 2, 1), adapt.AdaptSettings(5, psf="x"))
  with pytest.raises(adapt.AdaptError, match="no signal"):
    adapt.adapt_params(model, params, np.zeros((20, 20, 8)), (2, 2, 1), adapt.AdaptSettings(5))


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
  config, model, params = tiny_model
  return pretrained.export(tmp_path_factory.mktemp("tiny"), config, params, step=0, source="test")


@pytest.mark.slow
def test_command_adapts_saves_and_reuses_the_adapted_model(exported, tmp_path):
  scan = tmp_path / "scan.nii.gz"
  nib.save(nib.Nifti1Image(smooth_scan() * 1000, np.diag([2.0, 2.0, 3.0, 1.0])), scan)
  out, saved = tmp_path / "out.nii.gz", tmp_path / "adapted"
  code, err = run_cli("upsample", "--checkpoint", exported, "--dwi", scan, "--scale", "2,2,1",
                      "--adapt", "3", "--psf", "block", "--save-adapted", saved, "--out", out,
                      "--quiet", "--max-memory", BUDGET)
  assert code == 0, err
  image = nib.load(out)
  assert image.shape == (40, 40, 8) and np.all(np.isfinite(image.get_fdata()))
  manifest = json.loads((saved / "manifest.json").read_text())
  assert manifest["adapt"]["steps"] == 3 and manifest["adapt"]["psf"] == "block"
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
