"""`--psf auto` (`jaxsr.dmri.degradation.acquisition`) and exact k-space data consistency."""

import jax
import numpy as np
import pytest

from configs import general
from jaxsr import kspace
from jaxsr.dmri.degradation import acquisition, psf
from jaxsr.dmri.app.adapt import AdaptError, AdaptSettings
from jaxsr.dmri.degradation.degrade import back_project
from jaxsr.dmri.models import build_model, init_params
from jaxsr.dmri.app.model import Upsampler
from jaxsr.dmri.app.upsample import upsample


def textured(shape=(48, 40, 24), seed=0) -> np.ndarray:
  """A positive volume with detail at every scale: smoothed noise plus sharp-edged blocks."""
  rng = np.random.default_rng(seed)
  spectrum = np.fft.fftn(rng.normal(size=shape))
  f = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in shape], indexing="ij")))
  smooth = np.fft.ifftn(spectrum / (1 + (f / 0.05) ** 2)).real
  blocks = np.kron(rng.random((6, 5, 3)), np.ones((8, 8, 8)))[: shape[0], : shape[1], : shape[2]]
  return (2 + smooth / smooth.std() + 2 * blocks).astype(np.float32)


@pytest.mark.parametrize("voxel, groups", [
    ((2.0, 2.0, 5.0), [("in-plane", (0, 1)), ("through-plane", (2,))]),
    ((1.0, 3.0, 1.0), [("in-plane", (0, 2)), ("through-plane", (1,))]),
    ((4.0, 1.2, 1.2), [("in-plane", (1, 2)), ("through-plane", (0,))]),
    ((8.0, 8.0, 5.0), [("in-plane", (0, 1)), ("through-plane", (2,))]),  # thin slices, coarse plane
    ((0.94, 0.9375, 3.0), [("in-plane", (0, 1)), ("through-plane", (2,))]),  # rounding
    ((1.0, 2.0, 3.0), [("in-plane", (0, 1)), ("through-plane", (2,))]),  # the largest is thickest
    ((2.0, 2.0, 2.0), [("isotropic", (0, 1, 2))]),
    ((2.5, 2.49, 2.51), [("isotropic", (0, 1, 2))]),
])
def test_axis_groups_on_known_grids(voxel, groups):
  assert [(g.role, g.axes) for g in acquisition.axis_groups(voxel)] == groups


@pytest.mark.parametrize("in_plane, through, expected", [
    ("kspace", "kspace", ("kspace", "kspace", "kspace")),
    ("kspace", "block", ("kspace", "kspace", "cubic")),
    ("block", "kspace", ("cubic", "cubic", "kspace")),
    ("gaussian", "gaussian", ("cubic", "cubic", "cubic")),
])
def test_auto_picks_the_known_psf_per_axis(in_plane, through, expected):
  hr = textured()
  lr = psf.degrade(psf.degrade(hr, (24, 20, 24), in_plane), (24, 20, 12), through)
  # A perfect PSF-blind estimate (the truth): what the residual test decides from.
  choice = acquisition.estimate_psf(hr, lr, voxel_size=(2.0, 2.0, 4.0))
  assert choice.psf == expected
  assert set(choice.residuals) == {"in-plane", "through-plane"}
  record = choice.record()
  assert record["mode"] == "auto" and record["per_axis"] == list(expected)
  assert record["groups"] == {"in-plane": [0, 1], "through-plane": [2]}


def test_auto_on_an_isotropic_grid_takes_one_psf_for_all_axes_and_says_so():
  hr = textured()
  lr = psf.degrade(hr, (24, 20, 12), "kspace")
  choice = acquisition.estimate_psf(hr, lr, voxel_size=(2.0, 2.0, 2.0))
  assert choice.psf == ("kspace",) * 3 and "isotropic" in choice.note
  choice = acquisition.estimate_psf(hr, psf.degrade(hr, (24, 20, 12), "block"), (2.0, 2.0, 2.0))
  assert choice.psf == ("cubic",) * 3 and list(choice.residuals) == ["isotropic"]


def test_psf_option_parses_auto_names_and_per_axis_lists():
  assert acquisition.psf_option(None) is None
  assert acquisition.psf_option("auto") == "auto"
  assert acquisition.psf_option("kspace") == ("kspace",) * 3
  assert acquisition.psf_option("kspace, kspace,block") == ("kspace", "kspace", "block")
  with pytest.raises(psf.PSFError, match="unknown PSF 'sinc'"):
    acquisition.psf_option("kspace,sinc,block")
  with pytest.raises(psf.PSFError, match="one PSF or three"):
    acquisition.psf_option("kspace,block")


@pytest.mark.parametrize("hr_shape, lr_shape", [((48, 40, 24), (24, 20, 24)),
                                                ((45, 39, 24), (15, 13, 24)),
                                                ((48, 40, 24), (19, 16, 24))])
def test_kspace_data_consistency_reproduces_the_inputs_kspace_centre_exactly(hr_shape, lr_shape):
  hr = textured(hr_shape)
  lr = psf.degrade(hr, lr_shape, "kspace")
  estimate = textured(hr_shape, seed=1)  # any estimate, far from the truth
  out = back_project(estimate, lr, 1, psf=("kspace", "kspace", "block"))
  # Degrading the output reproduces the input exactly after one iteration ...
  np.testing.assert_allclose(psf.degrade(out, lr_shape, "kspace"), lr, atol=2e-5 * lr.max())
  # ... its measured k-space centre is the input's (that of the input zero-filled) ...
  spectrum = np.fft.fft2(out, axes=(0, 1))
  measured = np.fft.fft2(kspace.zero_fill(lr, hr_shape), axes=(0, 1))
  fx = np.abs(np.fft.fftfreq(hr_shape[0]) * hr_shape[0])[:, None]
  fy = np.abs(np.fft.fftfreq(hr_shape[1]) * hr_shape[1])[None, :]
  centre = (fx < (lr_shape[0] - 1) / 2) & (fy < (lr_shape[1] - 1) / 2)
  scale = np.abs(measured).max()
  np.testing.assert_allclose(spectrum[centre] / scale, measured[centre] / scale, atol=1e-5)
  # ... and outside the band it keeps the estimate's frequencies.
  outside = (fx > lr_shape[0] / 2) | (fy > lr_shape[1] / 2)
  np.testing.assert_allclose(spectrum[outside] / scale,
                             np.fft.fft2(estimate, axes=(0, 1))[outside] / scale, atol=1e-5)


def test_back_projection_with_spatial_psfs_converges_to_consistency():
  hr = textured()
  lr = psf.degrade(hr, (24, 20, 12), ("kspace", "kspace", "block"))
  estimate = textured(seed=1)
  errors = [np.abs(psf.degrade(back_project(estimate, lr, k, ("kspace", "kspace", "block")),
                               lr.shape, ("kspace", "kspace", "block")) - lr).max()
            for k in (1, 3, 10)]
  assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3 * lr.max()


def tiny_upsampler() -> Upsampler:
  config = general.get_config("smoke")
  model = build_model(config.model)
  return Upsampler(model, init_params(model, jax.random.key(0), 1, (4, 4, 4)), 1, "tiny", 0,
                   config)


def test_upsample_records_what_auto_decided():
  upsampler = tiny_upsampler()
  record = {}
  volume = textured((16, 16, 8))
  out, _ = upsample(volume, np.diag([2.0, 2.0, 4.0, 1.0]), upsampler, scale=(2, 2, 1),
                    record=record)
  assert out.shape == (32, 32, 8) and np.all(np.isfinite(out))
  assert record["psf"]["mode"] == "auto" and len(record["psf"]["per_axis"]) == 3
  assert record["psf"]["groups"] == {"in-plane": [0, 1], "through-plane": [2]}
  assert record["psf"]["per_axis"][2] == "cubic"  # through-plane is not upsampled
  given = {}
  upsample(volume, np.diag([2.0, 2.0, 4.0, 1.0]), upsampler, scale=(2, 2, 1), psf="block",
           record=given)
  assert given["psf"] == {"mode": "given", "per_axis": ["block"] * 3}


def test_with_adaptation_auto_decides_the_psf_before_adapting_and_adapts_with_it():
  record = {}
  upsample(textured((24, 24, 8)), np.diag([2.0, 2.0, 4.0, 1.0]), tiny_upsampler(), scale=(2, 2, 1),
           adapt=AdaptSettings(steps=2, batch_size=1, lr_patch_size=4), record=record)
  assert record["psf"]["decided"].startswith(
      "on the unadapted model's output for the volume adapted to")
  assert list(record["adapt"]["psf"]) == record["psf"]["per_axis"]  # adapted with it
  assert record["adapt"]["volumes"] == [0]
  with pytest.raises(AdaptError, match="no signal"):  # a blank first volume: one line, no KeyError
    upsample(np.zeros((24, 24, 8, 2), np.float32) + textured((24, 24, 8))[..., None]
             * np.array([0.0, 1.0], np.float32), np.diag([2.0, 2.0, 4.0, 1.0]),
             tiny_upsampler(), scale=(2, 2, 1), adapt=AdaptSettings(steps=2))


def test_a_groups_threshold_decides_between_kspace_and_a_spatial_psf():
  hr = textured()
  lr = psf.degrade(hr, (24, 20, 24), "block")  # in-plane 2x, block: the residual test says cubic
  choice = acquisition.estimate_psf(hr, lr, voxel_size=(2.0, 2.0, 1.0))
  ratio = acquisition.kspace_ratio(choice.residuals["in-plane"])
  assert choice.psf[:2] == ("cubic", "cubic") and ratio > acquisition.DEFAULT_THRESHOLDS["in-plane"]
  looser = acquisition.estimate_psf(hr, lr, (2.0, 2.0, 1.0), {"in-plane": ratio * 1.001})
  assert looser.psf[:2] == ("kspace", "kspace")
  assert looser.record()["thresholds"]["in-plane"] == pytest.approx(ratio * 1.001)
  with pytest.raises(ValueError, match="positive values"):
    acquisition.estimate_psf(hr, lr, (2.0, 2.0, 1.0), {"in-plane": 0.0})
  with pytest.raises(ValueError, match="roles"):
    acquisition.check_thresholds({"sideways": 1.0})


def test_calibrate_cuts_halfway_where_fewest_cases_fall_on_the_wrong_side():
  samples = [("in-plane", r, True) for r in (0.7, 0.8, 0.9)]
  samples += [("in-plane", r, False) for r in (1.1, 1.3, 1.5)]
  samples += [("through-plane", r, True) for r in (1.0, 1.2, 1.4)]  # overlapping kinds:
  samples += [("through-plane", r, False) for r in (1.3, 1.6, 1.7)]  # one case stays wrong
  samples += [("isotropic", 0.8, True)]  # one kind only: the default stays
  fitted = acquisition.calibrate(samples)
  assert fitted["in-plane"] == pytest.approx(1.0)
  # Cuts at 1.25 and 1.5 each leave one case wrong; 1.4–1.6 is the wider gap.
  assert fitted["through-plane"] == pytest.approx(1.5)
  assert fitted["isotropic"] == acquisition.DEFAULT_THRESHOLDS["isotropic"]
