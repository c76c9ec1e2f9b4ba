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
by the PSF given (`--psf`) or by one drawn per crop from `jaxsr.dmri.degradation.psf.PSFS`.
All crops have one shape, so the step compiles once. The loss is the model's
training loss (L1 + fft_weight · FFT term); Adam at `learning_rate`.

Adaptation is checked on the scan before it is trusted (`adapt_params`). First
the transfer check (`transfer_check`): what deployment assumes, that fine-tuning
one scale down helps one scale up, is tried one level lower, where the answer
is known: a trial fine-tunes on the scan degraded twice -> once and must lower
the loss of degraded once -> the scan, a scale it never trained at; otherwise
(or where the scan is too small to be degraded twice) the model stays as it
was. Then a slab of the scan at one end of one axis (`HeldOutSplit`: a quarter
of it, or as much as one crop needs, at most half) is held out, and training
crops never reach into it. Two fixed sets
of crops from the slab, degraded alike, are restored before training and every
`eval_every` steps after: the first set stops training once its loss has not
fallen for `patience` evaluations and picks the best step; the second, which
chose nothing, decides: the adapted weights are kept only if they lower its loss
by at least `min_gain` (a fraction), else the model stays as it was. Both
losses, the step chosen and the decision are returned for the output's record.

Both checks score one scale below the one the user asked for. The last check
(`ConsistencyCheck`, made by `jaxsr.dmri.app.adaptation`, which runs the model on
the whole scan) is at the requested scale, on the one measurement there is: the
adapted model's raw output for the scan, degraded by the scan's PSF, must
reproduce the scan at least as well as the unadapted model's did. Adaptation
never trained on that pair (scan -> finer grid), so it is held out; an adapted
model that explains the scan worse has learnt something that does not hold at
this scale, and is not kept (the validation scans' cases where a kept adaptation
lowered the output's PSNR were mostly such, docs/results_real.md).
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

from jaxsr.dmri.degradation import psf as psf_lib
from jaxsr.dmri.degradation.degrade import back_project
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
    psf: the scan's PSF (one of `jaxsr.dmri.degradation.psf.PSFS`), or None to draw one per crop.
    batch_size: crops per step.
    lr_patch_size: LR crop edge (voxels), at most.
    learning_rate: Adam's step size.
    seed: crops and PSFs are drawn from this seed.
    eval_every: steps between held-out evaluations.
    patience: evaluations without a lower held-out loss before training stops.
    heldout_crops: crops in each of the two held-out sets (stopping, deciding).
    min_gain: the adapted weights are kept only if they lower the deciding set's loss
      by at least this fraction.
    check_transfer: first check, one scale down, that adapting helps the scale above
      (`transfer_check`); adaptation runs only if it does.
  """
  steps: int = 0
  psf: str | None = None
  batch_size: int = 4
  lr_patch_size: int = 8
  learning_rate: float = 3e-4  # chosen on the validation scans (docs/results_real.md)
  seed: int = 0
  eval_every: int = 10
  patience: int = 5
  heldout_crops: int = 8
  min_gain: float = 0.01
  check_transfer: bool = True


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


@dataclasses.dataclass(frozen=True)
class HeldOutSplit:
  """The scan split along `axis` into a training part and a held-out slab `heldout` (a slice
  along that axis; the training part is the rest), and the crop shapes both can hold."""
  axis: int
  heldout: slice
  train: slice
  hr_shape: tuple[int, ...]
  lr_shape: tuple[int, ...]

  def region(self, part: str) -> tuple[slice, slice, slice]:
    """Index of the training part ("train") or the held-out slab ("heldout")."""
    index = [slice(None)] * 3
    index[self.axis] = self.heldout if part == "heldout" else self.train
    return tuple(index)


def held_out_shapes(scan_shape: Sequence[int], factors: Sequence[float], lr_patch_size: int
                    ) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
  """(axis, slab size, HR crop, LR crop) of the split whose crops are largest: along each
  axis, a slab of a quarter of it or one full crop, at most half.

  Raises:
    AdaptError: the scan is too small for the factors even before splitting, or no split
      leaves room for a crop on both sides.
  """
  full_hr, _ = crop_shapes(scan_shape, factors, lr_patch_size)
  best = None
  for axis, n in enumerate(scan_shape):
    size = min(n // 2, max(math.ceil(n / 4), full_hr[axis]))
    region = list(scan_shape)
    region[axis] = size
    try:
      hr, lr = crop_shapes(region, factors, lr_patch_size) if size >= 1 else (None, None)
    except AdaptError:
      continue
    if hr is not None and (best is None or math.prod(hr) > math.prod(best[2])):
      best = (axis, size, hr, lr)
  if best is None:
    raise AdaptError(f"the scan ({'×'.join(map(str, scan_shape))} voxels) is too small to "
                     "hold part of it out for checking the adaptation at these factors")
  return best


def held_out_split(scan: np.ndarray, factors: Sequence[float], lr_patch_size: int
                   ) -> HeldOutSplit:
  """`held_out_shapes`' split of `scan` (X, Y, Z), the slab at the end with more signal."""
  axis, size, hr, lr = held_out_shapes(scan.shape, factors, lr_patch_size)
  n = scan.shape[axis]
  signal = np.moveaxis(scan > SIGNAL_FRACTION * float(np.percentile(scan, 99)), axis, 0)
  if signal[:size].sum() >= signal[n - size:].sum():
    return HeldOutSplit(axis, slice(0, size), slice(size, n), hr, lr)
  return HeldOutSplit(axis, slice(n - size, n), slice(0, n - size), hr, lr)


@dataclasses.dataclass
class AdaptSampler:
  """Random (HR crop, its degraded LR) pairs from one part of a scan.

  `scan` (X, Y, Z) normalised; crops of `split`'s shapes lie inside `split.region(part)`.
  """
  scan: np.ndarray
  factors: Sequence[float]
  settings: AdaptSettings
  split: HeldOutSplit
  part: str = "train"

  def __post_init__(self):
    if self.settings.psf is not None:
      psf_lib.per_axis(self.settings.psf)
    self.hr_shape, self.lr_shape = self.split.hr_shape, self.split.lr_shape
    self.region = self.scan[self.split.region(self.part)]
    level = SIGNAL_FRACTION * float(np.percentile(self.scan, 99))
    self.centres = np.argwhere(self.region > level)
    if len(self.centres) == 0:
      if self.part == "train":
        raise AdaptError("the scan has no signal to adapt to")
      self.centres = np.argwhere(np.ones(self.region.shape, bool))
    self.transpose = self.hr_shape[0] == self.hr_shape[1] and self.lr_shape[0] == self.lr_shape[1]

  def __call__(self, rng: np.random.Generator, augment: bool = True) -> dict[str, np.ndarray]:
    """{'hr': (B, *hr_shape), 'lr': (B, *lr_shape)} float32 and 'psf': the B PSFs they were
    degraded with; flips and transposes if `augment`."""
    shape = np.array(self.region.shape)
    size = np.array(self.hr_shape)
    hr, lr, kinds = [], [], []
    for _ in range(self.settings.batch_size):
      centre = self.centres[rng.integers(len(self.centres))]
      corner = np.clip(centre - size // 2, 0, shape - size)
      crop = self.region[tuple(slice(c, c + s) for c, s in zip(corner, size))]
      if augment:
        for axis in range(3):
          if rng.random() < 0.5:
            crop = np.flip(crop, axis)
        if self.transpose and rng.random() < 0.5:
          crop = np.swapaxes(crop, 0, 1)
      kind = self.settings.psf or str(rng.choice(psf_lib.PSFS))
      fwhm = 1.0 if self.settings.psf else (rng.uniform(0.7, 1.5) if kind == "gaussian" else 1.0)
      hr.append(np.ascontiguousarray(crop, np.float32))
      lr.append(psf_lib.degrade(crop, self.lr_shape, kind, fwhm))
      kinds.append(kind)
    return {"hr": np.stack(hr), "lr": np.stack(lr), "psf": kinds}


def adapt_loss(model, params, hr: jax.Array, lr: jax.Array, fft_weight: float) -> jax.Array:
  """The training loss of `model` restoring HR crops (B, X, Y, Z) from LR ones (B, x, y, z)."""
  pred = model.apply({"params": params}, lr[..., None], hr.shape[1:], method="reconstruct_grid")
  return csr_dmri_loss(pred, hr, fft_weight)[0]


@functools.lru_cache(maxsize=8)
def make_adapt_step(model, fft_weight: float, learning_rate: float
                    ) -> tuple[optax.GradientTransformation, Callable, Callable]:
  """(optimizer, jitted step(params, opt_state, hr, lr) -> (params, opt_state, loss),
  jitted predict(params, lr, hr_shape) -> (B, *hr_shape) outputs).

  Cached per (model, fft_weight, learning_rate): adapting the same model to several scans
  of one crop shape compiles the step once.
  """
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, hr, lr):
    loss, grads = jax.value_and_grad(adapt_loss, argnums=1)(model, params, hr, lr, fft_weight)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda params, lr, hr_shape: model.apply(
      {"params": params}, lr[..., None], hr_shape, method="reconstruct_grid"), static_argnums=2)
  return optimizer, step, predict


@dataclasses.dataclass(frozen=True)
class TransferCheck:
  """Whether adapting one scale down helped one scale up (see `transfer_check`).

  Attributes:
    passed: the trial lowered the deciding set's loss by at least `min_gain`.
    loss_before, loss_after: that set's loss with the original and the trial parameters
      (None where the check could not be made).
    best_step: the trial's step chosen by the stopping set.
    reason: why it failed or could not be made ("" when it passed).
  """
  passed: bool
  loss_before: float | None = None
  loss_after: float | None = None
  best_step: int = 0
  reason: str = ""

  def record(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ConsistencyCheck:
  """How well the raw model output for the whole scan, degraded by its PSF, reproduces it
  (RMS residual over the scan's 99th percentile), before and after adaptation."""
  before: float
  after: float

  @property
  def passed(self) -> bool:
    return self.after <= self.before

  def record(self) -> dict:
    return {"residual_before": self.before, "residual_after": self.after,
            "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class AdaptResult:
  """What adaptation did: the parameters to use and why.

  Attributes:
    params: the adapted parameters if kept, else the original ones.
    kept: whether the transfer check passed, the adapted parameters lowered the deciding
      held-out loss enough and (once made, `after_consistency`) the consistency check passed.
    loss_before, loss_after: the deciding held-out set's loss with the original and with
      the adapted (best-step) parameters (equal where adaptation did not run).
    best_step: the step the stopping set chose (0: none was better than the start).
    steps_run: steps trained (fewer than asked when the held-out loss stopped falling).
    steps_asked: `settings.steps`.
    history: training loss per step.
    heldout_history: [(step, stopping set's loss)], step 0 first.
    split: the held-out slab.
    transfer: the transfer check, or None where it was not asked for.
    consistency: the check at the requested scale (`ConsistencyCheck`), or None where it
      was not made (adaptation not kept before it).
  """
  params: dict
  kept: bool
  loss_before: float
  loss_after: float
  best_step: int
  steps_run: int
  steps_asked: int
  history: list[float]
  heldout_history: list[tuple[int, float]]
  split: HeldOutSplit
  transfer: TransferCheck | None = None
  min_gain: float = AdaptSettings.min_gain
  consistency: ConsistencyCheck | None = None

  def after_consistency(self, check: ConsistencyCheck, original: dict) -> "AdaptResult":
    """This result once `check` is made: not kept (the `original` parameters) if it failed."""
    if check.passed:
      return dataclasses.replace(self, consistency=check)
    return dataclasses.replace(self, consistency=check, kept=False, params=original)

  @property
  def message(self) -> str:
    """One line for the user."""
    if self.transfer is not None and not self.transfer.passed:
      return f"adaptation not kept, the model is used as it was: {self.transfer.reason}"
    change = (f"held-out loss {self.loss_before:.4g} -> {self.loss_after:.4g} "
              f"(step {self.best_step} of {self.steps_run} run, {self.steps_asked} asked)")
    if self.kept:
      return f"adaptation kept: {change}"
    if self.consistency is not None and not self.consistency.passed:
      return (f"adaptation not kept, the model is used as it was: its output reproduces the "
              f"scan less well than the model's (residual {self.consistency.before:.4g} -> "
              f"{self.consistency.after:.4g}; {change})")
    return (f"adaptation not kept, the model is used as it was: it did not lower the "
            f"held-out loss by {100 * self.min_gain:g} % ({change})")

  def record(self) -> dict:
    s = self.split
    return {"kept": self.kept, "heldout_loss_before": self.loss_before,
            "heldout_loss_after": self.loss_after, "best_step": self.best_step,
            "steps_run": self.steps_run, "steps_asked": self.steps_asked,
            "heldout_slab": {"axis": s.axis, "start": s.heldout.start, "stop": s.heldout.stop},
            "crop_shape": list(s.hr_shape),
            "heldout_history": [[k, v] for k, v in self.heldout_history],
            "transfer_check": self.transfer.record() if self.transfer is not None else None,
            "consistency_check": (self.consistency.record() if self.consistency is not None
                                  else None),
            "message": self.message}


# Held-out crops are scored as outputs are made: the model's output made consistent with its
# input by as many back-projection iterations as `jaxsr upsample` runs by default.
CHECK_BACK_PROJECTION = 3


def _mean_loss(predict, params, batches: Sequence[dict]) -> float:
  """Mean absolute error of the crops' restorations after data consistency (what the user
  gets: where consistency fixes the measured band, only what the model adds above it counts)."""
  errors = []
  for batch in batches:
    pred = np.asarray(predict(params, batch["lr"], tuple(batch["hr"].shape[1:])))
    for out, lr, hr, kind in zip(pred, batch["lr"], batch["hr"], batch["psf"]):
      out = np.clip(back_project(out, lr, CHECK_BACK_PROJECTION, psf=kind), 0.0, None)
      errors.append(float(np.mean(np.abs(out - hr))))
  return float(np.mean(errors))


@dataclasses.dataclass(frozen=True)
class _FineTuned:
  params: dict  # the best step's (the original ones if no step was better)
  before: float  # deciding set, original parameters
  after: float  # deciding set, best step's parameters
  best_step: int
  history: list[float]
  heldout_history: list[tuple[int, float]]

  def helped(self, min_gain: float) -> bool:
    """Whether a step beat the start and lowered the deciding set's loss by `min_gain`."""
    return bool(self.best_step) and self.after <= self.before * (1.0 - min_gain)


def _fine_tune(params, sampler: "AdaptSampler", stop_set: Sequence[dict],
               decide_set: Sequence[dict], settings: AdaptSettings, functions, *,
               progress: bool, desc: str) -> _FineTuned:
  """Adam on `sampler`'s crops; every `eval_every` steps the stopping set's loss picks the best
  step and stops training after `patience` evaluations without a lower one."""
  optimizer, step, predict = functions
  original = params
  before = _mean_loss(predict, original, decide_set)
  best_loss = _mean_loss(predict, original, stop_set)
  heldout_history = [(0, best_loss)]
  best_params, best_step, since_best = original, 0, 0
  params = jax.tree_util.tree_map(jnp.array, params)  # a copy: the caller's stay as they are
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(settings.seed)
  history = []
  with tqdm(total=settings.steps, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
    for index in range(1, settings.steps + 1):
      batch = sampler(rng)
      params, opt_state, loss = step(params, opt_state, batch["hr"], batch["lr"])
      history.append(float(loss))
      bar.update(1)
      bar.set_postfix(loss=f"{history[-1]:.4g}")
      if index % settings.eval_every and index != settings.steps:
        continue
      value = _mean_loss(predict, params, stop_set)
      heldout_history.append((index, value))
      if value < best_loss:
        best_loss, best_params, best_step, since_best = value, params, index, 0
      else:
        since_best += 1
        if since_best >= settings.patience:
          break
  after = _mean_loss(predict, best_params, decide_set) if best_step else before
  return _FineTuned(best_params, before, after, best_step, history, heldout_history)


def _whole(shape: Sequence[int], factors: Sequence[float], lr_patch_size: int) -> HeldOutSplit:
  """A 'split' that holds nothing out: crops anywhere in a volume of `shape`."""
  hr, lr = crop_shapes(shape, factors, lr_patch_size)
  return HeldOutSplit(0, slice(0, 0), slice(0, shape[0]), hr, lr)


def _fixed_crops(sampler: "AdaptSampler", count: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [sampler(rng, augment=False) for _ in range(count)]


def transfer_check(params, scan: np.ndarray, factors: Sequence[float], settings: AdaptSettings,
                   functions, *, progress: bool = False) -> TransferCheck:
  """Does adapting at one scale help at the scale above, on this scan?

  Deployment trusts that fine-tuning on (the scan degraded by `factors` -> the scan) helps
  at (the scan -> finer). The check asks the same one level down: a trial fine-tunes on
  (the scan degraded twice -> degraded once) and is scored on (degraded once -> the scan),
  a scale it never trained at; it passes if it lowers that loss by `min_gain`. A scan too
  small to be degraded twice into crops of `MIN_LR_VOXELS` cannot be checked: not passed.
  """
  once_shape = tuple(max(1, int(round(n / f))) for n, f in zip(scan.shape, factors))
  once = psf_lib.degrade(scan, once_shape, settings.psf or "cubic")
  try:
    trial_split = _whole(once.shape, factors, settings.lr_patch_size)
  except AdaptError:
    return TransferCheck(False, reason="the scan is too small to check, once degraded "
                         f"({'×'.join(map(str, once_shape))} voxels), whether adapting to it "
                         "helps one scale up")
  check = AdaptSampler(scan, factors, dataclasses.replace(settings, batch_size=1),
                       _whole(scan.shape, factors, settings.lr_patch_size), part="train")
  crops = _fixed_crops(check, 2 * settings.heldout_crops, settings.seed + 2)
  trial = _fine_tune(params, AdaptSampler(once, factors, settings, trial_split),
                     crops[:settings.heldout_crops], crops[settings.heldout_crops:], settings,
                     functions, progress=progress, desc="adapt (check)")
  passed = trial.helped(settings.min_gain)
  reason = "" if passed else (
      f"adapting one scale down did not help one scale up (loss {trial.before:.4g} -> "
      f"{trial.after:.4g} where at least {100 * settings.min_gain:g} % lower was needed)")
  return TransferCheck(passed, trial.before, trial.after, trial.best_step, reason)


def adapt_params(model, params, scan: np.ndarray, factors: Sequence[float],
                 settings: AdaptSettings, *, fft_weight: float = 0.0, progress: bool = False
                 ) -> AdaptResult:
  """Fine-tunes `params` on `scan` (X, Y, Z), normalised as the model's inputs are, and keeps
  the result only where checks on the scan say it helps (module docstring).

  Args:
    model: the implicit DWI-only model (`CSRdMRI` with one input channel).
    params: its parameters (not modified).
    scan: the user's scan on its own grid.
    factors: (3,) per-axis upsampling factors requested (>= 1; an axis at 1 is
      not degraded).
    settings: steps, PSF, batch, crop size, learning rate, seed, checks.
    fft_weight: weight of the FFT loss term, as the model was trained.
    progress: show a progress bar.

  Returns:
    An `AdaptResult`: the parameters to use (adapted or original), the transfer check,
    both held-out losses, the decision and the loss histories.

  Raises:
    AdaptError: a scan too small for the factors or for a held-out part, no signal, bad
      settings; PSFError: an unknown PSF.
  """
  if settings.steps < 0:
    raise AdaptError(f"--adapt takes a number of steps >= 0, got {settings.steps}")
  if settings.eval_every < 1 or settings.patience < 1 or settings.heldout_crops < 1:
    raise AdaptError("eval_every, patience and heldout_crops must be >= 1")
  factors = [max(1.0, float(f)) for f in factors]
  scan = np.asarray(scan, np.float32)
  split = held_out_split(scan, factors, settings.lr_patch_size)
  sampler = AdaptSampler(scan, factors, settings, split)
  functions = make_adapt_step(model, fft_weight, settings.learning_rate)
  heldout = AdaptSampler(scan, factors, dataclasses.replace(settings, batch_size=1), split,
                         part="heldout")
  crops = _fixed_crops(heldout, 2 * settings.heldout_crops, settings.seed + 1)
  stop_set, decide_set = crops[:settings.heldout_crops], crops[settings.heldout_crops:]
  transfer = None
  if settings.check_transfer and settings.steps:
    transfer = transfer_check(params, scan, factors, settings, functions, progress=progress)
    if not transfer.passed:
      before = _mean_loss(functions[2], params, decide_set)
      return AdaptResult(params, False, before, before, 0, 0, settings.steps, [], [], split,
                         transfer, settings.min_gain)
  tuned = _fine_tune(params, sampler, stop_set, decide_set, settings, functions,
                     progress=progress, desc="adapt")
  kept = tuned.helped(settings.min_gain)
  return AdaptResult(tuned.params if kept else params, kept, tuned.before, tuned.after,
                     tuned.best_step, len(tuned.history), settings.steps, tuned.history,
                     tuned.heldout_history, split, transfer, settings.min_gain)
