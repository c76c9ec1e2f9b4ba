import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import kspace
from jaxsr.dmri.degradation.degrade import (back_project, degrade, lr_shape_for_scale,
                                            tricubic_upsample)


def centres(n):
  return (2 * np.arange(n) + 1) / n - 1


def test_lr_shape_for_scale_rounds_per_axis():
  assert lr_shape_for_scale((145, 174, 145), 2.4) == (60, 72, 60)
  assert lr_shape_for_scale((145, 174, 145), (2, 2, 1.5)) == (72, 87, 97)
  assert lr_shape_for_scale((3, 3, 3), 10) == (1, 1, 1)


@pytest.mark.parametrize("scale", [0, -2, (2, 2)])
def test_lr_shape_for_scale_rejects_bad_scales(scale):
  with pytest.raises(ValueError):
    lr_shape_for_scale((10, 10, 10), scale)


def test_degrade_keeps_the_field_of_view():
  """A linear function of the [-1, 1] coordinate is reproduced at LR voxel centres (away from edges)."""
  n_hr, n_lr = 60, 24
  c = centres(n_hr)
  hr = (0.3 * c[:, None, None] - 0.2 * c[None, :, None] + 0.1 * c[None, None, :] + 0.5)
  lr = np.asarray(degrade(hr.astype(np.float32), (n_lr,) * 3))
  cl = centres(n_lr)
  expected = (0.3 * cl[:, None, None] - 0.2 * cl[None, :, None] + 0.1 * cl[None, None, :] + 0.5)
  inner = (slice(3, -3),) * 3
  # The stretched Keys kernel sampled at a non-integer factor (2.5) reproduces a
  # linear ramp to ~3e-4; a half-HR-voxel shift of the frame would err by 5e-3.
  np.testing.assert_allclose(lr[inner], expected[inner], atol=1e-3)


def test_degrade_is_anti_aliased():
  """A Nyquist checkerboard at HR averages out instead of aliasing into the LR grid."""
  i = np.indices((40, 40, 40)).sum(0)
  hr = (i % 2).astype(np.float32)
  lr = np.asarray(degrade(hr, (16, 16, 16)))
  assert np.abs(lr[2:-2, 2:-2, 2:-2] - 0.5).max() < 0.05


def test_tricubic_round_trip_of_smooth_volume_is_close():
  c = centres(48)
  x, y, z = np.meshgrid(c, c, c, indexing="ij")
  hr = (np.sin(2 * x) * np.cos(1.5 * y) + 0.3 * z).astype(np.float32)
  up = np.asarray(tricubic_upsample(degrade(hr, (24, 24, 24)), hr.shape))
  inner = (slice(4, -4),) * 3
  assert np.abs(up - hr)[inner].max() < 0.02
  assert up.shape == hr.shape


def band_limited(shape):
  """A periodic band-limited function of the [-1, 1] coordinates, sampled at voxel centres."""
  x, y, z = np.meshgrid(*[centres(n) for n in shape], indexing="ij")
  return (np.cos(np.pi * (x + 1) * 2) + 0.5 * np.sin(np.pi * (y + 1) * 3)
          + 0.25 * np.cos(np.pi * (z + 1) * 1 + 0.3))


@pytest.mark.parametrize("hr_shape", [(24, 30, 18), (25, 29, 17)])
def test_kspace_zero_fill_reproduces_band_limited_volumes_on_voxel_centres(hr_shape):
  lr = band_limited((10, 12, 8))
  up = kspace.zero_fill(lr, hr_shape)
  assert up.shape == hr_shape and up.dtype == np.float32
  np.testing.assert_allclose(up, band_limited(hr_shape), atol=1e-5)


def test_kspace_zero_fill_same_shape_is_identity_and_checks_dimensions():
  lr = np.random.default_rng(0).random((6, 7, 5))
  np.testing.assert_allclose(kspace.zero_fill(lr, lr.shape), lr, atol=1e-6)
  with pytest.raises(ValueError):
    kspace.zero_fill(lr, (12, 14))


def test_back_projection_converges_to_the_lr_volume_and_keeps_high_frequencies():
  rng = np.random.default_rng(3)
  truth = rng.random((24, 20, 16), dtype=np.float32)
  lr = np.asarray(degrade(jnp.asarray(truth), (8, 10, 8)))
  estimate = 0.7 * truth + 0.1  # right detail, wrong contrast
  np.testing.assert_array_equal(back_project(estimate, lr, 0), estimate)
  residuals = [np.abs(np.asarray(degrade(jnp.asarray(back_project(estimate, lr, k)), lr.shape))
                      - lr).mean() for k in range(4)]
  assert all(b < 0.7 * a for a, b in zip(residuals, residuals[1:])), residuals
  assert residuals[-1] < 0.05 * residuals[0]
  # An estimate that already degrades to lr is (nearly) left alone, detail included.
  consistent = back_project(truth, lr, 3)
  assert np.abs(consistent - truth).max() < 0.05 * np.abs(estimate - truth).max()
