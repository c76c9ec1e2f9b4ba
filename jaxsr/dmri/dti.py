"""Diffusion-tensor metrics of super-resolved shells: FA and MD maps and their errors.

The SR models work on one b-shell, each volume divided by the mean b0, so the
signal is S/S0 and the b0 is 1 by construction. Tensors are fitted by dipy's weighted
least squares on a b0 of ones followed by the shell's volumes, solved by its normal equations
(`wls_tensor_coefficients`).
"""

from __future__ import annotations

import numpy as np

# Normalised signal is clipped to this floor before the log-linear fit (S/S0 <= 0 has no log).
MIN_SIGNAL = 1e-4


def tensor_maps(dwi: np.ndarray, bvecs: np.ndarray, bval: float,
                mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """FA and MD maps of one shell.

  Args:
    dwi: (X, Y, Z, K) shell volumes divided by the mean b0 (S/S0).
    bvecs: (K, 3) unit gradient directions.
    bval: the shell's b-value, s/mm².
    mask: (X, Y, Z) bool; voxels outside are not fitted.

  Returns:
    (fa, md): float32 (X, Y, Z) maps, FA in [0, 1] and MD in mm²/s, 0 outside `mask`.
  """
  dwi = np.asarray(dwi, np.float64)
  bvecs = np.asarray(bvecs, np.float64)
  if dwi.ndim != 4 or bvecs.shape != (dwi.shape[-1], 3):
    raise ValueError(f"need (X, Y, Z, K) volumes and (K, 3) bvecs, got {dwi.shape} and "
                     f"{bvecs.shape}")
  if dwi.shape[-1] < 6:
    raise ValueError(f"a tensor has 6 unknowns: need at least 6 directions, got {dwi.shape[-1]}")
  # dipy on use: it slows every command's start-up.
  from dipy.core.gradients import gradient_table
  from dipy.reconst.dti import (design_matrix, fractional_anisotropy, from_lower_triangular,
                                mean_diffusivity)

  gtab = gradient_table(np.r_[0.0, np.full(len(bvecs), bval)],
                        bvecs=np.r_[np.zeros((1, 3)), bvecs])
  design = design_matrix(gtab)
  mask = np.asarray(mask, bool)
  signal = np.concatenate([np.ones((int(mask.sum()), 1)), np.maximum(dwi[mask], MIN_SIGNAL)],
                          axis=-1)
  tensors = from_lower_triangular(wls_tensor_coefficients(design, signal)[:, :6])
  # dipy's floor on the eigenvalues of its fits (`wls_fit_tensor`).
  eigenvalues = np.linalg.eigvalsh(tensors).clip(min=1e-6 / -design.min())
  fa, md = np.zeros(mask.shape), np.zeros(mask.shape)
  fa[mask] = fractional_anisotropy(eigenvalues)
  md[mask] = mean_diffusivity(eigenvalues)
  return (np.nan_to_num(fa).clip(0.0, 1.0).astype(np.float32),
          np.nan_to_num(md).astype(np.float32))


def wls_tensor_coefficients(design: np.ndarray, signal: np.ndarray) -> np.ndarray:
  """dipy's weighted least-squares tensor fit, by its normal equations.

  The fit of `dipy.reconst.dti.wls_fit_tensor`: log signal regressed on the design with
  each voxel's weights the squared signal that an ordinary least-squares fit predicts. dipy
  solves each voxel's weighted problem by a pseudo-inverse (an SVD per voxel), which took
  about three quarters of a comparison's evaluation; with a design of full column rank the
  normal equations give the same coefficients (tests/test_dti.py checks them against dipy's
  TensorModel) from two matrix products and one 7 × 7 solve per voxel.

  Args:
    design: (G, 7) dipy's `design_matrix` of the gradient table.
    signal: (N, G) positive signal of N voxels.

  Returns:
    (N, 7) coefficients: the lower triangle of each tensor (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz)
    and -log S0.
  """
  log_signal = np.log(signal)
  weights = np.exp(log_signal @ (design @ np.linalg.pinv(design)).T) ** 2  # OLS prediction²
  products = (design[:, :, None] * design[:, None, :]).reshape(len(design), -1)  # (G, 49)
  normal = (weights @ products).reshape(-1, 7, 7)  # Σ_g w X_gi X_gj
  right = (weights * log_signal) @ design  # Σ_g w X_gi log S_g
  return np.linalg.solve(normal, right[..., None])[..., 0]


def spread_directions(bvecs: np.ndarray, count: int) -> list[int]:
  """Indices of `count` (>= 6) of the (K, 3) `bvecs` spread over the sphere (greedy farthest
  point, antipodes identified; the first direction first), sorted; all when count <= 0 or >= K.

  A tensor fit from these sees every orientation, as from the whole shell, at a fraction of
  the volumes (`eval.dti_volumes`).
  """
  bvecs = np.asarray(bvecs, np.float64)
  if count <= 0 or count >= len(bvecs):
    return list(range(len(bvecs)))
  if count < 6:
    raise ValueError(f"a tensor has 6 unknowns: need at least 6 directions, got {count}")
  chosen = [0]
  while len(chosen) < count:
    cosines = np.abs(bvecs @ bvecs[chosen].T).max(axis=1)
    cosines[chosen] = np.inf
    chosen.append(int(np.argmin(cosines)))
  return sorted(chosen)


def dti_errors(fa: np.ndarray, md: np.ndarray, fa_truth: np.ndarray, md_truth: np.ndarray,
               mask: np.ndarray) -> dict[str, float]:
  """RMSE inside `mask` of FA (unitless) and of MD, reported in 10⁻³ mm²/s (= µm²/ms)."""
  mask = np.asarray(mask, bool)
  if not mask.any():
    raise ValueError("the mask for DTI errors is empty")
  fa_rmse = np.sqrt(np.mean((fa[mask] - fa_truth[mask]) ** 2))
  md_rmse = np.sqrt(np.mean((md[mask] - md_truth[mask]) ** 2)) * 1e3
  return {"fa_rmse": float(fa_rmse), "md_rmse": float(md_rmse)}
