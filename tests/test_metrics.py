"""PSNR and SSIM: known answers and agreement with scikit-image."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jaxsr import metrics


@pytest.fixture
def volumes():
  """A smooth-ish target in [0, 1] and a noisy prediction, 20 x 18 x 16."""
  rng = np.random.default_rng(0)
  x, y, z = np.meshgrid(*[np.linspace(0, 1, n) for n in (20, 18, 16)], indexing="ij")
  target = 0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y) * z
  pred = target + rng.normal(0, 0.05, target.shape)
  return pred, target


def skimage_ssim(pred, target, data_range, **kwargs):
  return structural_similarity(target, pred, data_range=data_range, gaussian_weights=True,
                               sigma=kwargs.pop("sigma", 1.5), use_sample_covariance=False,
                               **kwargs)


def test_psnr_of_a_known_noise_level():
  rng = np.random.default_rng(0)
  target = rng.random((64, 64, 64))
  noise = rng.normal(0, 0.1, target.shape)
  value = metrics.psnr(target + noise, target, data_range=1.0)
  assert abs(value - 20.0) < 0.1  # 10 log10(1 / 0.1^2)
  np.testing.assert_allclose(value, 10 * np.log10(1 / np.mean(noise**2)), rtol=1e-12)


def test_psnr_matches_skimage(volumes):
  pred, target = volumes
  expected = peak_signal_noise_ratio(target, pred, data_range=target.max() - target.min())
  np.testing.assert_allclose(metrics.psnr(pred, target), expected, rtol=1e-12)


def test_masked_psnr_uses_only_mask_voxels(volumes):
  pred, target = volumes
  mask = target > 0.5
  corrupted = np.where(mask, pred, 100.0)  # outside the mask: ignored
  expected = peak_signal_noise_ratio(target[mask], pred[mask],
                                     data_range=target[mask].max() - target[mask].min())
  np.testing.assert_allclose(metrics.psnr(corrupted, target, mask), expected, rtol=1e-12)


def test_psnr_of_identical_volumes_is_infinite(volumes):
  _, target = volumes
  assert metrics.psnr(target, target) == float("inf")


def test_ssim_of_identical_volumes_is_one(volumes):
  _, target = volumes
  assert metrics.ssim(target, target) == pytest.approx(1.0, abs=1e-12)
  assert metrics.ssim(target, target, mask=target > 0.5) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [1.5, 1.0])
def test_ssim_matches_skimage_on_random_volumes(sigma):
  rng = np.random.default_rng(1)
  target = rng.random((15, 14, 13))
  pred = 0.7 * target + 0.3 * rng.random(target.shape)
  data_range = target.max() - target.min()
  expected = skimage_ssim(pred, target, data_range, sigma=sigma)
  np.testing.assert_allclose(metrics.ssim(pred, target, sigma=sigma), expected, atol=1e-6)
  np.testing.assert_allclose(metrics.ssim(pred, target, data_range=2.0, sigma=sigma),
                             skimage_ssim(pred, target, 2.0, sigma=sigma), atol=1e-6)


def test_masked_ssim_is_the_mean_of_skimages_map_over_the_mask(volumes):
  pred, target = volumes
  mask = target > 0.5
  data_range = target[mask].max() - target[mask].min()
  _, ssim_map = skimage_ssim(pred, target, data_range, full=True)
  np.testing.assert_allclose(metrics.ssim(pred, target, mask), ssim_map[mask].mean(), atol=1e-6)


@pytest.mark.parametrize("metric", [metrics.psnr, metrics.ssim])
def test_invalid_inputs_raise(metric, volumes):
  pred, target = volumes
  with pytest.raises(ValueError, match="shapes differ"):
    metric(pred[:-1], target)
  with pytest.raises(ValueError, match="mask shape"):
    metric(pred, target, np.ones((3, 3, 3), bool))
  with pytest.raises(ValueError, match="no voxels"):
    metric(pred, target, np.zeros(target.shape, bool))


def test_unmasked_ssim_rejects_volumes_smaller_than_the_window():
  volume = np.random.default_rng(0).random((20, 20, 8))
  with pytest.raises(ValueError, match="border"):
    metrics.ssim(volume, volume)


def test_sharpness_measures_are_one_for_the_truth_and_fall_with_blur():
  from scipy import ndimage

  from jaxsr import kspace
  rng = np.random.default_rng(7)
  truth = ndimage.gaussian_filter(rng.random((64, 64)), 1.0)
  mask = np.zeros((64, 64), bool)
  mask[8:56, 8:56] = True
  assert metrics.gradient_sharpness(truth, truth, mask) == pytest.approx(1.0)
  assert metrics.high_frequency_ratio(truth, truth, 16) == pytest.approx(1.0)
  blurred = [ndimage.gaussian_filter(truth, s) for s in (0.5, 1.0, 2.0)]
  sharpness = [metrics.gradient_sharpness(b, truth, mask) for b in blurred]
  assert 1 > sharpness[0] > sharpness[1] > sharpness[2] > 0
  # Twice the image: twice the gradients, four times the spectral energy.
  assert metrics.gradient_sharpness(2 * truth, truth, mask) == pytest.approx(2.0)
  assert metrics.high_frequency_ratio(2 * truth, truth, 16) == pytest.approx(4.0)
  # k-space zero-filling holds nothing beyond the acquired n x n.
  zero_filled = np.asarray(kspace.truncate(truth, 16))
  assert metrics.high_frequency_ratio(zero_filled, truth, 16) == pytest.approx(0.0, abs=1e-10)
  finer = np.asarray(kspace.truncate(truth, 24))  # holds 8 <= |f| < 12 of the 16-outside band
  assert 0.05 < metrics.high_frequency_ratio(finer, truth, 16) < 0.95
  with pytest.raises(ValueError, match="no interior"):
    one = np.zeros((64, 64), bool)
    one[3, 3] = True
    metrics.gradient_sharpness(truth, truth, one)
