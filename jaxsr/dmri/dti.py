"""Diffusion-tensor metrics of super-resolved shells: FA and MD maps and their errors.

The SR models work on one b-shell, each volume divided by the mean b0, so the
signal is S/S0 and the b0 is 1 by construction. Tensors are fitted with dipy's
weighted least squares on a b0 of ones followed by the shell's volumes.
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
  from dipy.reconst.dti import TensorModel

  gtab = gradient_table(np.r_[0.0, np.full(len(bvecs), bval)],
                        bvecs=np.r_[np.zeros((1, 3)), bvecs])
  signal = np.concatenate([np.ones(dwi.shape[:3] + (1,)), np.maximum(dwi, MIN_SIGNAL)], axis=-1)
  fit = TensorModel(gtab).fit(signal, mask=np.asarray(mask, bool))
  fa = np.nan_to_num(fit.fa).clip(0.0, 1.0)
  md = np.nan_to_num(fit.md)
  return fa.astype(np.float32), md.astype(np.float32)


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
