"""L1, k-space (FFT), CSR-dMRI, MS-SSIM and MRSI losses: known answers."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads
from scipy import ndimage

from jaxsr import metrics
from jaxsr.dmri import loss as losses
from jaxsr.mrsi.loss import MS_SSIM_WEIGHTS, mrsi_loss, ms_ssim


def random_volumes(shape=(2, 4, 6, 5), seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=shape), jnp.float32),
          jnp.asarray(rng.normal(size=shape), jnp.float32))


def test_l1_of_a_constant_offset():
  pred, _ = random_volumes()
  np.testing.assert_allclose(losses.l1_loss(pred + 0.25, pred), 0.25, rtol=1e-5)
  np.testing.assert_allclose(losses.l1_loss(pred - 0.25, pred), 0.25, rtol=1e-5)


def test_fft_loss_of_identical_volumes_is_zero():
  pred, _ = random_volumes()
  assert float(losses.fft_loss(pred, pred)) == 0.0


def test_fft_loss_of_a_constant_offset_is_the_offset():
  """Only the DC bin is nonzero: a * N voxels in one of N bins, mean |a|."""
  pred, _ = random_volumes()
  np.testing.assert_allclose(losses.fft_loss(pred - 0.3, pred), 0.3, rtol=1e-4)


def test_fft_loss_of_a_shifted_impulse():
  """Impulse vs the impulse shifted by one voxel along an axis of N voxels.

  FFT(delta) = 1 and FFT(shifted) = exp(-2 pi i k / N) along that axis, whatever
  the other two frequencies, so the mean over all bins is the mean over k of
  |1 - exp(-2 pi i k / N)| = (2 / N) sum_k sin(pi k / N) = (2 / N) cot(pi / (2N)).
  The second batch element is identical, halving the batch mean.
  """
  shape, axis = (4, 6, 5), 1
  n = shape[axis]
  impulse = np.zeros(shape, np.float32)
  impulse[0, 0, 0] = 1
  shifted = np.roll(impulse, 1, axis=axis)
  expected = 2 / n / np.tan(np.pi / (2 * n))
  np.testing.assert_allclose(losses.fft_loss(impulse[None], shifted[None]), expected, rtol=1e-5)
  pred, target = np.stack([impulse, impulse]), np.stack([shifted, impulse])
  np.testing.assert_allclose(losses.fft_loss(pred, target), expected / 2, rtol=1e-5)


def test_fft_loss_equals_the_definition_with_numpy():
  pred, target = random_volumes()
  axes = (1, 2, 3)
  expected = np.mean(np.abs(np.fft.fftn(np.float64(pred), axes=axes)
                            - np.fft.fftn(np.float64(target), axes=axes)))
  np.testing.assert_allclose(losses.fft_loss(pred, target), expected, rtol=1e-5)


def test_losses_scale_linearly_and_are_symmetric():
  pred, target = random_volumes()
  for loss in (losses.l1_loss, losses.fft_loss):
    np.testing.assert_allclose(loss(-3 * pred, -3 * target), 3 * loss(pred, target), rtol=1e-5)
    np.testing.assert_allclose(loss(target, pred), loss(pred, target), rtol=1e-6)
  # fft_loss is the mean |FFT| of the difference: shifting both inputs changes nothing.
  np.testing.assert_allclose(losses.fft_loss(pred + 2, target + 2), losses.fft_loss(pred, target),
                             rtol=1e-5)


def test_csr_dmri_loss_combines_the_terms():
  pred, target = random_volumes()
  loss, parts = losses.csr_dmri_loss(pred, target, fft_weight=0.5)
  np.testing.assert_allclose(parts["l1"], losses.l1_loss(pred, target), rtol=1e-6)
  np.testing.assert_allclose(parts["fft"], losses.fft_loss(pred, target), rtol=1e-6)
  np.testing.assert_allclose(loss, parts["l1"] + 0.5 * parts["fft"], rtol=1e-6)
  default_loss, _ = losses.csr_dmri_loss(pred, target)
  np.testing.assert_allclose(default_loss, parts["l1"] + 0.01 * parts["fft"], rtol=1e-6)


def test_gradients_are_finite_even_at_zero_error():
  pred, target = random_volumes()
  grad_fn = jax.jit(jax.grad(lambda p, t: losses.csr_dmri_loss(p, t)[0]))
  for t in (target, pred):
    assert np.isfinite(grad_fn(pred, t)).all()
  check_grads(losses.fft_loss, (pred, target), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_ms_ssim_known_values():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((3, 64, 64)), jnp.float32)
  np.testing.assert_allclose(ms_ssim(x, x), 1.0, atol=1e-6)
  # Constant maps a and b: every contrast term is 1, the luminance term at the coarsest
  # scale is (2ab + C1) / (a^2 + b^2 + C1), raised to the last weight.
  a, b = 0.3, 0.7
  c1 = (0.01 * 1.0) ** 2
  expected = ((2 * a * b + c1) / (a * a + b * b + c1)) ** MS_SSIM_WEIGHTS[-1]
  value = ms_ssim(jnp.full((64, 64), a), jnp.full((64, 64), b))
  np.testing.assert_allclose(value, expected, rtol=1e-4)  # float32 variances of ~1e-8
  # Noise lowers it, more noise lowers it more.
  noisy = [float(ms_ssim(x[0] + s * rng.standard_normal((64, 64)), x[0])) for s in (0.05, 0.2)]
  assert 1 > noisy[0] > noisy[1] > 0


def test_one_scale_ms_ssim_is_the_ssim_of_scikit_image_definition():
  rng = np.random.default_rng(1)
  truth = ndimage.gaussian_filter(rng.random((40, 48)), 2.0)
  pred = truth + 0.05 * rng.standard_normal(truth.shape)
  ours = float(ms_ssim(jnp.asarray(pred), jnp.asarray(truth), data_range=1.0, weights=(1.0,)))
  reference = metrics.ssim(pred, truth, mask=np.ones(truth.shape, bool), data_range=1.0)
  np.testing.assert_allclose(ours, reference, rtol=1e-5)


def test_mrsi_loss_ignores_rejected_pixels():
  rng = np.random.default_rng(2)
  target = jnp.asarray(rng.random((2, 32, 32)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 32, 32)) > 0.3)
  pred = jnp.where(mask, target, 5.0)  # wrong only where the mask rejects
  loss, parts = mrsi_loss(pred, target, mask)
  np.testing.assert_allclose([loss, parts["l1"], parts["ms_ssim"]], [0.0, 0.0, 1.0], atol=1e-6)
  loss, parts = mrsi_loss(target + 0.1 * mask, target, mask, alpha=0.0)
  np.testing.assert_allclose(loss, 0.1, rtol=1e-5)
