"""DTI maps recover known tensors; errors are RMSEs inside the mask."""

import numpy as np
import pytest

from jaxsr.dmri.dti import dti_errors, tensor_maps


def _directions(count, seed=0):
  v = np.random.default_rng(seed).normal(size=(count, 3))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _tensor(eigenvalues, direction):
  """Axially symmetric tensor with principal `direction`."""
  e1 = direction / np.linalg.norm(direction)
  l1, l2 = eigenvalues
  return l2 * np.eye(3) + (l1 - l2) * np.outer(e1, e1)


def test_recovers_fa_and_md_of_known_tensors():
  bvecs, bval = _directions(12), 1000.0
  eigenvalues = [(1.7e-3, 0.3e-3), (0.8e-3, 0.8e-3), (1.2e-3, 0.5e-3)]
  shape = (3, 2, 2)
  dwi = np.zeros(shape + (12,))
  fa_expected, md_expected = np.zeros(shape), np.zeros(shape)
  for i, (l1, l2) in enumerate(eigenvalues):
    tensor = _tensor((l1, l2), np.array([1.0, i, 0.5]))
    dwi[i] = np.exp(-bval * np.einsum("ki,ij,kj->k", bvecs, tensor, bvecs))
    lam = np.array([l1, l2, l2])
    md_expected[i] = lam.mean()
    fa_expected[i] = np.sqrt(1.5 * np.sum((lam - lam.mean()) ** 2) / np.sum(lam ** 2))
  mask = np.ones(shape, bool)
  mask[2, 1, 1] = False
  fa, md = tensor_maps(dwi, bvecs, bval, mask)
  np.testing.assert_allclose(fa[mask], fa_expected[mask], atol=1e-4)
  np.testing.assert_allclose(md[mask], md_expected[mask], rtol=1e-4)
  assert fa[2, 1, 1] == 0 and md[2, 1, 1] == 0
  assert fa_expected[1, 0, 0] == pytest.approx(0.0) and fa_expected[0, 0, 0] > 0.7


def test_maps_equal_dipys_weighted_least_squares_fit_on_noisy_signal():
  from dipy.core.gradients import gradient_table
  from dipy.reconst.dti import TensorModel

  rng = np.random.default_rng(1)
  bvecs, bval, shape = _directions(12, seed=2), 1000.0, (6, 5, 4)
  dwi = np.empty(shape + (12,))
  for index in np.ndindex(shape):
    l1, l2 = rng.uniform(0.3e-3, 2.0e-3, 2)
    tensor = _tensor((max(l1, l2), min(l1, l2)), rng.normal(size=3))
    dwi[index] = np.exp(-bval * np.einsum("ki,ij,kj->k", bvecs, tensor, bvecs))
  dwi = np.abs(dwi + rng.normal(0, 0.03, dwi.shape))  # SNR about 30; some values near 0
  dwi[0, 0, 0, 3] = 0.0  # floored at MIN_SIGNAL by both
  mask = rng.random(shape) > 0.2
  fa, md = tensor_maps(dwi, bvecs, bval, mask)
  gtab = gradient_table(np.r_[0.0, np.full(12, bval)], bvecs=np.r_[np.zeros((1, 3)), bvecs])
  signal = np.concatenate([np.ones(shape + (1,)), np.maximum(dwi, 1e-4)], axis=-1)
  fit = TensorModel(gtab, fit_method="WLS").fit(signal, mask=mask)
  np.testing.assert_allclose(fa, np.nan_to_num(fit.fa).clip(0, 1), atol=1e-6)
  np.testing.assert_allclose(md, np.nan_to_num(fit.md), rtol=1e-5, atol=1e-12)
  assert not fa[~mask].any() and not md[~mask].any()


def test_errors_are_rmse_inside_mask_with_md_in_um2_per_ms():
  mask = np.zeros((4, 4, 4), bool)
  mask[:2] = True
  truth = np.zeros((4, 4, 4))
  fa = truth + 0.1 * mask + 5.0 * ~mask  # outside the mask does not count
  md = truth + 2e-4 * mask
  errors = dti_errors(fa, md, truth, truth, mask)
  assert errors["fa_rmse"] == pytest.approx(0.1)
  assert errors["md_rmse"] == pytest.approx(0.2)
  with pytest.raises(ValueError, match="empty"):
    dti_errors(fa, md, truth, truth, np.zeros_like(mask))


def test_rejects_too_few_directions_and_mismatched_bvecs():
  with pytest.raises(ValueError, match="6 directions"):
    tensor_maps(np.ones((2, 2, 2, 5)), _directions(5), 1000.0, np.ones((2, 2, 2), bool))
  with pytest.raises(ValueError, match="bvecs"):
    tensor_maps(np.ones((2, 2, 2, 8)), _directions(7), 1000.0, np.ones((2, 2, 2), bool))
