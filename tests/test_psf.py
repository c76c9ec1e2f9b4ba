"""Acquisition PSFs (`jaxsr.dmri.degradation.psf`): known answers per PSF, shared properties,
bad input."""

import math

import jax
import numpy as np
import pytest

from jaxsr.dmri.degradation import psf


def test_block_with_integer_factors_is_the_block_mean():
  x = np.random.default_rng(0).random((12, 9, 10)).astype(np.float32)
  lr = psf.degrade(x, (6, 3, 5), "block")
  np.testing.assert_allclose(lr, x.reshape(6, 2, 3, 3, 5, 2).mean(axis=(1, 3, 5)), atol=1e-6)


def test_block_with_a_fractional_factor_weights_cells_by_their_overlap():
  # 5 HR voxels -> 2 LR voxels of 2.5 HR voxels: LR 0 covers HR cells 0, 1 and half of 2.
  matrix = psf.axis_matrix("block", 5, 2)
  np.testing.assert_allclose(matrix, [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]], atol=1e-6)


def test_cubic_is_the_antialiased_resize_of_the_training_degradation():
  x = np.random.default_rng(1).random((40, 30, 20)).astype(np.float32)
  shape = (20, 12, 20)
  ours = psf.degrade(x, shape, "cubic")
  reference = np.asarray(jax.image.resize(x, shape, "cubic", antialias=True))
  # jax renormalises at the borders where this module reflects: compare away from them.
  np.testing.assert_allclose(ours[3:-3, 3:-3], reference[3:-3, 3:-3], atol=1e-5)


@pytest.mark.parametrize("n_out, n_in", [(160, 80), (60, 24), (11, 5), (7, 7)])
def test_the_cubic_resize_matrix_is_tricubic_interpolation_along_one_axis(n_out, n_in):
  """The spatial PSFs' back-projection and the report's tricubic planes rest on it."""
  from jaxsr.dmri.degradation.degrade import tricubic_upsample

  units = np.eye(n_in, dtype=np.float32)[:, :, None, None]  # volume j: the unit vector j
  reference = np.asarray(tricubic_upsample(units, (n_out, 1, 1)))[:, :, 0, 0].T
  # jax computes its weights in float32: equal to that rounding
  np.testing.assert_allclose(psf.cubic_resize_matrix(n_out, n_in), reference, atol=3e-6)
  np.testing.assert_allclose(psf.right_inverse("cubic", n_out, n_in), reference, atol=3e-6)


@pytest.mark.parametrize("factor, fwhm", [(2, 1.0), (3, 1.0), (2.5, 1.4)])
def test_gaussian_rows_have_the_variance_of_the_psf_plus_one_hr_cell(factor, fwhm):
  n_hr = 120
  n_lr = int(round(n_hr / factor))
  matrix = psf.axis_matrix("gaussian", n_hr, n_lr, fwhm).astype(np.float64)
  j = n_lr // 2  # away from the ends
  s = n_hr / n_lr
  centre = (j + 0.5) * s - 0.5
  i = np.arange(n_hr)
  mean = np.sum(matrix[j] * i)
  variance = np.sum(matrix[j] * (i - mean) ** 2)
  sigma = fwhm * s / (2 * math.sqrt(2 * math.log(2)))
  assert mean == pytest.approx(centre, abs=1e-4)
  assert variance == pytest.approx(sigma**2 + 1 / 12, rel=2e-3)  # a Gaussian over a unit box


def test_kspace_keeps_the_lr_band_exactly_and_removes_what_lies_above():
  n_hr, n_lr = 24, 8
  i = np.arange(n_hr)
  s = n_hr / n_lr
  positions = (np.arange(n_lr) + 0.5) * s - 0.5
  matrix = psf.axis_matrix("kspace", n_hr, n_lr)
  inside = np.cos(2 * np.pi * 3 * i / n_hr + 0.4)  # 3 cycles < n_lr / 2
  np.testing.assert_allclose(matrix @ inside, np.cos(2 * np.pi * 3 * positions / n_hr + 0.4),
                             atol=1e-5)
  above = np.cos(2 * np.pi * 7 * i / n_hr)  # 7 cycles > n_lr / 2: not acquired
  np.testing.assert_allclose(matrix @ above, 0.0, atol=1e-5)


def test_kspace_truncation_rings_at_an_edge():
  step = np.repeat([0.0, 1.0], 32)
  lr = psf.axis_matrix("kspace", 64, 16) @ step
  assert lr.max() > 1.005 and lr.min() < -0.005  # Gibbs overshoot, which block averaging lacks
  block = psf.axis_matrix("block", 64, 16) @ step
  assert block.min() >= 0 and block.max() <= 1 + 1e-6


@pytest.mark.parametrize("kind", psf.PSFS)
def test_every_psf_keeps_constants_and_leaves_unscaled_axes_alone(kind):
  x = np.random.default_rng(2).random((12, 10, 7)).astype(np.float32)
  np.testing.assert_allclose(psf.degrade(np.full((12, 10, 7), 3.0), (5, 4, 7), kind), 3.0,
                             atol=1e-5)
  np.testing.assert_array_equal(psf.degrade(x, (12, 10, 7), kind), x)
  out = psf.degrade(x[None], (6, 10, 7), kind)  # leading axes are kept
  assert out.shape == (1, 6, 10, 7)
  np.testing.assert_allclose(out[0, :, 3, 2], psf.axis_matrix(kind, 12, 6) @ x[:, 3, 2],
                             atol=1e-6)


def test_bad_requests_raise_psf_errors():
  with pytest.raises(psf.PSFError, match="unknown PSF 'sinc'"):
    psf.degrade(np.zeros((4, 4, 4)), (2, 2, 2), "sinc")
  with pytest.raises(psf.PSFError, match="cannot degrade"):
    psf.axis_matrix("block", 4, 8)
  with pytest.raises(psf.PSFError, match="FWHM"):
    psf.axis_matrix("gaussian", 8, 4, 0.0)
