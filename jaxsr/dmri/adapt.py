"""Self-supervised adaptation to the user's own scan (internal learning, as ZSSR and SMORE).

The scan itself is the only HR example there is: it is degraded once more by
the factors the user asks for, and the model is fine-tuned for a bounded
number of steps to restore the scan from that, so it learns this scanner's
contrast, noise and texture at this scale. Then it is applied to the scan.

Training pairs (`AdaptSampler`): an HR crop of round(l_a f_a) voxels per axis
(f the requested factors, l_a = min(lr_patch_size, floor(n_a / f_a)) LR voxels,
at least MIN_LR_VOXELS along each degraded axis)
centred on a voxel with signal, flipped at random along each axis (and
transposed in-plane when both in-plane factors agree), degraded to l_a voxels
by the PSF given (`--psf`) or by one drawn per crop from `jaxsr.dmri.psf.PSFS`.
All crops have one shape, so the step compiles once. The loss is the model's
training loss (L1 + fft_weight · FFT term); Adam at `learning_rate`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxsr.dmri import psf as psf_lib
from jaxsr.dmri.loss import csr_dmri_loss
from jaxsr.errors import JaxsrError

# Per degraded axis: LR crops of fewer voxels are mostly border, and fine-tuning on them
# wrecked whole-volume outputs on the validation scans (docs/results_real.md).
MIN_LR_VOXELS = 4
SIGNAL_FRACTION = 0.1  # crop centres: voxels above this fraction of the scan's 99th percentile


class AdaptError(JaxsrError, ValueError):
  """A scan that cannot be adapted to (too small for the factors, bad options); one line."""


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
  """Adaptation options.

  Attributes:
    steps: fine-tuning steps (0: none).
    psf: the scan's PSF (one of `jaxsr.dmri.psf.PSFS`), or None to draw one per crop.
    batch_size: crops per step.
    lr_patch_size: LR crop edge (voxels), at most.
    learning_rate: Adam's step size.
    seed: crops and PSFs are drawn from this seed.
  """
  steps: int = 0
  psf: str | None = None
  batch_size: int = 4
  lr_patch_size: int = 8
  learning_rate: float = 3e-4  # chosen on the validation scans (docs/results_real.md)
  seed: int = 0


def crop_shapes(scan_shape: Sequence[int], factors: Sequence[float], lr_patch_size: int
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(HR crop shape, LR crop shape) for a scan and per-axis factors; AdaptError if too small."""
  lr, hr = [], []
  for axis, (n, f) in enumerate(zip(scan_shape, factors)):
    l = min(lr_patch_size, int(math.floor(n / f + 1e-6)))
    if f > 1 and l < MIN_LR_VOXELS:
      raise AdaptError(f"the scan has {n} voxels along axis {axis}: too few to degrade it "
                       f"{f:.3g}x more for --adapt (needs at least {math.ceil(MIN_LR_VOXELS * f)})")
    lr.append(l)
    hr.append(min(n, max(l, int(round(l * f)))))
  return tuple(hr), tuple(lr)


@dataclasses.dataclass
class AdaptSampler:
  """Random (HR crop, its degraded LR) pairs from one scan, `scan` (X, Y, Z) normalised."""
  scan: np.ndarray
  factors: Sequence[float]
  settings: AdaptSettings

  def __post_init__(self):
    if self.settings.psf is not None:
      psf_lib.check_psf(self.settings.psf)
    self.hr_shape, self.lr_shape = crop_shapes(self.scan.shape, self.factors,
                                               self.settings.lr_patch_size)
    level = SIGNAL_FRACTION * float(np.percentile(self.scan, 99))
    self.centres = np.argwhere(self.scan > level)
    if len(self.centres) == 0:
      raise AdaptError("the scan has no signal to adapt to")
    self.transpose = self.hr_shape[0] == self.hr_shape[1] and self.lr_shape[0] == self.lr_shape[1]

  def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{'hr': (B, *hr_shape), 'lr': (B, *lr_shape)} float32."""
    shape = np.array(self.scan.shape)
    size = np.array(self.hr_shape)
    hr, lr = [], []
    for _ in range(self.settings.batch_size):
      centre = self.centres[rng.integers(len(self.centres))]
      corner = np.clip(centre - size // 2, 0, shape - size)
      crop = self.scan[tuple(slice(c, c + s) for c, s in zip(corner, size))]
      for axis in range(3):
        if rng.random() < 0.5:
          crop = np.flip(crop, axis)
      if self.transpose and rng.random() < 0.5:
        crop = np.swapaxes(crop, 0, 1)
      kind = self.settings.psf or str(rng.choice(psf_lib.PSFS))
      fwhm = 1.0 if self.settings.psf else (rng.uniform(0.7, 1.5) if kind == "gaussian" else 1.0)
      hr.append(np.ascontiguousarray(crop, np.float32))
      lr.append(psf_lib.degrade(crop, self.lr_shape, kind, fwhm))
    return {"hr": np.stack(hr), "lr": np.stack(lr)}


def adapt_loss(model, params, hr: jax.Array, lr: jax.Array, fft_weight: float) -> jax.Array:
  """The training loss of `model` restoring HR crops (B, X, Y, Z) from LR ones (B, x, y, z)."""
  pred = model.apply({"params": params}, lr[..., None], hr.shape[1:], method="reconstruct_grid")
  return csr_dmri_loss(pred, hr, fft_weight)[0]


@functools.lru_cache(maxsize=8)
def make_adapt_step(model, fft_weight: float, learning_rate: float
                    ) -> tuple[optax.GradientTransformation, Callable]:
  """(optimizer, jitted step(params, opt_state, hr, lr) -> (params, opt_state, loss)).

  Cached per (model, fft_weight, learning_rate): adapting the same model to several scans
  of one crop shape compiles the step once.
  """
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, hr, lr):
    loss, grads = jax.value_and_grad(adapt_loss, argnums=1)(model, params, hr, lr, fft_weight)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return optimizer, step


def adapt_params(model, params, scan: np.ndarray, factors: Sequence[float],
                 settings: AdaptSettings, *, fft_weight: float = 0.0, progress: bool = False
                 ) -> tuple[dict, list[float]]:
  """Fine-tunes `params` on `scan` (X, Y, Z), normalised as the model's inputs are.

  Args:
    model: the implicit DWI-only model (`CSRdMRI` with one input channel).
    params: its parameters (not modified).
    scan: the user's scan on its own grid.
    factors: (3,) per-axis upsampling factors requested (>= 1; an axis at 1 is
      not degraded).
    settings: steps, PSF, batch, crop size, learning rate, seed.
    fft_weight: weight of the FFT loss term, as the model was trained.
    progress: show a progress bar.

  Returns:
    (adapted parameters, loss per step).

  Raises:
    AdaptError: a scan too small for the factors, or no signal; PSFError: an unknown PSF.
  """
  if settings.steps < 0:
    raise AdaptError(f"--adapt takes a number of steps >= 0, got {settings.steps}")
  factors = [max(1.0, float(f)) for f in factors]
  sampler = AdaptSampler(np.asarray(scan, np.float32), factors, settings)
  if settings.steps == 0:
    return params, []
  optimizer, step = make_adapt_step(model, fft_weight, settings.learning_rate)
  params = jax.tree_util.tree_map(jnp.array, params)  # a copy: the caller's stay as they are
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(settings.seed)
  history = []
  with tqdm(total=settings.steps, desc="adapt", disable=not progress, dynamic_ncols=True) as bar:
    for _ in range(settings.steps):
      batch = sampler(rng)
      params, opt_state, loss = step(params, opt_state, batch["hr"], batch["lr"])
      history.append(float(loss))
      bar.update(1)
      bar.set_postfix(loss=f"{history[-1]:.4g}")
  return params, history
