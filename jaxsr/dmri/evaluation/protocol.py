"""The scoring protocol of whole volumes on the test subjects, and the evaluation of one run.

Protocol: for each test subject, each scored b-shell volume and each scale s,
the HR volume (N voxels per axis) is degraded to an LR grid of round(N / s)
voxels (`jaxsr.dmri.degradation.degrade.degrade`, the training degradation), the DWI and
the T1 alike, then brought back onto the HR grid by every method. PSNR and 3D
SSIM are computed inside the brain mask against the HR truth.

Methods:
  tricubic, zero_fill  classical interpolation (Keys cubic; k-space zero-filling).
  implicit runs        (`model.kind` csr_dmri, with or without T1): encoder on the
                       LR input, decoder at every HR voxel centre, any scale.
  fixed-scale runs     (dcsrn, rescnn3d) trained at scale t: the CNN on the LR DWI
                       interpolated onto t times the LR grid, then resampled onto the
                       HR grid (`jaxsr.dmri.inference.reconstruct.reconstruct_fixed_scale`).

A trained run is read from its checkpoint alone (parameters and the config it was
trained with), so tables can be remade at any time without retraining.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable

import numpy as np
from tqdm import tqdm

from jaxsr import files, kspace, metrics, tables
from jaxsr.dmri import dti
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.data import subjects as subjects_lib
from jaxsr.dmri.degradation.degrade import degrade, lr_shape_for_scale, tricubic_upsample
from jaxsr.dmri.inference.reconstruct import reconstruct, reconstruct_fixed_scale
from jaxsr.dmri.models import is_implicit
from jaxsr.nifti import DataError
from jaxsr.train import distributed
from jaxsr.train.checkpoint import CheckpointError, TrainedRun, load_run, model_variables
from jaxsr.train.run_record import write_run_record

# (lr_dwi (x, y, z), lr_t1 (x, y, z) or None, hr_shape, scale) -> float32 (X, Y, Z)
Predict = Callable[[np.ndarray, np.ndarray | None, tuple, float], np.ndarray]
# Truth FA above which a brain voxel counts as white matter when a subject has no WM mask.
WM_FA_THRESHOLD = 0.2


@dataclasses.dataclass(frozen=True)
class Method:
  """A way to bring an LR volume onto the HR grid.

  Attributes:
    name: row name in the tables.
    predict: see `Predict`.
    uses_t1: whether `predict` needs the LR T1.
    t1, fft_loss: ablation flags of trained runs (Table 2 columns); None for classical methods.
    seed: training seed of a trained run that is one of several seeds; None otherwise.
  """
  name: str
  predict: Predict
  uses_t1: bool = False
  t1: bool | None = None
  fft_loss: bool | None = None
  seed: int | None = None


def classical_methods() -> dict[str, Method]:
  return {
      "tricubic": Method("tricubic", lambda lr, t1, shape, s: np.asarray(
          tricubic_upsample(lr, shape))),
      "zero_fill": Method("zero_fill", lambda lr, t1, shape, s: kspace.zero_fill(lr, shape)),
  }


def trained_method(name: str, run: TrainedRun, eval_config, seed: int | None = None) -> Method:
  """The `Method` of a trained run (implicit or fixed-scale, as its config says)."""
  model_config, model, variables = run.config.model, run.model, run.variables
  t1 = model_config.in_channels == 2
  fft_loss = run.config.train.fft_weight > 0
  if is_implicit(model_config.kind):
    # General models (configs/general.py) take volumes divided by a percentile of their own,
    # as `jaxsr upsample` gives them; the others the subjects' b0-normalised values as they are.
    percentile = run.config.data.get("intensity_percentile")

    def predict(lr, lr_t1, hr_shape, scale):
      reference = float(np.percentile(lr, percentile)) if percentile else 1.0
      inputs = np.stack([lr / reference, lr_t1] if t1 else [lr / reference], axis=-1)
      return reference * reconstruct(model, variables["params"], inputs, hr_shape,
                                     eval_config.chunk_size)
    return Method(name, predict, uses_t1=t1, t1=t1, fft_loss=fft_loss, seed=seed)
  data = run.config.data
  if data.scale_min != data.scale_max:
    raise ValueError(f"{name}: a fixed-scale model needs data.scale_min == data.scale_max")

  def predict(lr, lr_t1, hr_shape, scale):
    return reconstruct_fixed_scale(model, variables, lr, hr_shape, scale=scale,
                                   train_scale=data.scale_min, tile_voxels=eval_config.tile_voxels)
  return Method(name, predict, t1=False, fft_loss=fft_loss, seed=seed)


def validation_scores(config, model, subjects, state) -> dict[str, float]:
  """Mean PSNR/SSIM of a training state on validation subjects: {"val_psnr", "val_ssim"}.

  The evaluation protocol (whole volumes at `config.eval.scales`, inside the brain
  mask) on `config.eval.validation_volumes` b-shell volumes per subject; each
  subject's mean counts once.
  """
  run = TrainedRun(config, model, distributed.to_host(model_variables(state)), step=-1)
  method = trained_method("model", run, config.eval)
  rows = []
  for subject in subjects:
    rows += score_subject({"model": method}, subject, scales=config.eval.scales,
                          num_volumes=config.eval.validation_volumes)[0]
  return {f"val_{key}": float(np.mean(list(tables.unit_means(rows, key).values())))
          for key in ("psnr", "ssim")}


def evaluated_volumes(num_volumes: int, available: int) -> list[int]:
  """`num_volumes` b-shell volume indices spread evenly over the `available` ones (0: all)."""
  count = available if num_volumes <= 0 else min(num_volumes, available)
  return sorted({int(i) for i in np.linspace(0, available - 1, count).round()})


@dataclasses.dataclass
class FigureData:
  """One subject's outputs at one scale and volume, for the figures."""
  scale: float
  volume: int
  truth: np.ndarray
  mask: np.ndarray
  outputs: dict = dataclasses.field(default_factory=dict)
  scores: dict = dataclasses.field(default_factory=dict)
  fa_truth: np.ndarray | None = None
  fa: dict = dataclasses.field(default_factory=dict)
  fa_rmse: dict = dataclasses.field(default_factory=dict)


def score_subject(methods: dict[str, Method], subject, *, scales, num_volumes: int,
                  dti_scales=(), dti_volumes: int = 0, figure: FigureData | None = None,
                  progress: tqdm | None = None, inputs: dict | None = None
                  ) -> tuple[list[dict], list[dict]]:
  """PSNR/SSIM per (method, scale, scored volume) and FA/MD RMSE per (method, scale in `dti_scales`).

  At a scale in `dti_scales` the shell's volumes of `dti.spread_directions(bvecs,
  dti_volumes)` (0: all) are super-resolved, tensors are fitted on them and on the
  same HR volumes, and FA/MD are compared inside the subject's WM mask (without one:
  truth FA > 0.2 in the brain). `figure`, if given, is filled with the outputs at its
  scale and volume of each method it has none of yet. `inputs`, a dict kept by the caller
  for this subject, holds the LR volumes and truth tensors made here, so that scoring
  methods one call at a time degrades and fits the truth once.
  """
  inputs = {} if inputs is None else inputs
  hr_shape = subject.mask.shape
  mask = np.asarray(subject.mask)
  num_shell = subject.dwi.shape[-1]
  scored = evaluated_volumes(num_volumes, num_shell)
  dti_scales = [float(s) for s in dti_scales]
  fitted = dti.spread_directions(subject.bvecs, dti_volumes)
  if dti_scales:
    if ("truth tensors", tuple(fitted)) not in inputs:
      fa, md = dti.tensor_maps(np.stack([subject.dwi[..., v] for v in fitted], -1),
                               subject.bvecs[fitted], subject.bval, mask)
      inputs["truth tensors", tuple(fitted)] = (
          fa, md, np.asarray(subject.wm_mask) if subject.wm_mask is not None
          else mask & (fa > WM_FA_THRESHOLD))
    fa_truth, md_truth, wm = inputs["truth tensors", tuple(fitted)]
  rows, dti_rows = [], []
  t1 = np.asarray(subject.t1, np.float32)
  for scale in scales:
    with_dti = float(scale) in dti_scales
    needed = sorted(set(fitted) | set(scored)) if with_dti else scored
    lr_shape = lr_shape_for_scale(hr_shape, scale)
    if any(m.uses_t1 for m in methods.values()) and ("t1", lr_shape) not in inputs:
      inputs["t1", lr_shape] = np.asarray(degrade(t1, lr_shape))
    lr_t1 = inputs.get(("t1", lr_shape))
    for v in needed:
      if ("dwi", lr_shape, v) not in inputs:
        inputs["dwi", lr_shape, v] = np.asarray(
            degrade(np.asarray(subject.dwi[..., v], np.float32), lr_shape))
    lr_dwi = {v: inputs["dwi", lr_shape, v] for v in needed}
    keep = figure is not None and scale == figure.scale
    for method in methods.values():
      shell = np.empty(hr_shape + (len(fitted),), np.float32) if with_dti else None
      for v in needed:
        output = method.predict(lr_dwi[v], lr_t1, hr_shape, scale)
        if with_dti and v in fitted:
          shell[..., fitted.index(v)] = output
        if v in scored:
          truth = np.asarray(subject.dwi[..., v], np.float32)
          row = {"subject": subject.name, "method": method.name, "seed": method.seed,
                 "scale": float(scale), "volume": v, "psnr": metrics.psnr(output, truth, mask),
                 "ssim": metrics.ssim(output, truth, mask)}
          rows.append(row)
          if keep and v == figure.volume and method.name not in figure.outputs:
            figure.outputs[method.name] = output
            figure.scores[method.name] = (row["psnr"], row["ssim"])
      if with_dti:
        fa, md = dti.tensor_maps(shell, subject.bvecs[fitted], subject.bval, mask)
        errors = dti.dti_errors(fa, md, fa_truth, md_truth, wm)
        dti_rows.append({"subject": subject.name, "method": method.name, "seed": method.seed,
                         "scale": float(scale), **errors})
        if keep and method.name not in figure.fa:
          figure.fa[method.name] = fa
          figure.fa_rmse[method.name] = errors["fa_rmse"]
      if progress is not None:
        progress.update(1)
  if figure is not None and figure.fa:
    figure.fa_truth = fa_truth
  return rows, dti_rows


def checkpoint_choice(value) -> int | str:
  """`eval.checkpoint` as `load_run` takes it: "latest", "best" or a step (int, or digits)."""
  if isinstance(value, int) or str(value).isdigit():
    return int(value)
  if value not in ("latest", "best"):
    raise CheckpointError(f"eval.checkpoint: {value!r}; use latest, best or a step number")
  return value


def eval_dir(workdir: pathlib.Path, split: str, out: str | os.PathLike | None = None
             ) -> pathlib.Path:
  """Where an evaluation of `split` is written, checked writable (not created yet): OUT
  (default WORKDIR/eval) for the test split, else its subfolder named after the split."""
  base = pathlib.Path(out) if out else pathlib.Path(workdir) / "eval"
  folder = base if split == "test" else base / split
  files.check_can_create(folder)
  return folder


def scored_subjects(config) -> tuple[str, list]:
  """(split name, subjects) that `config.eval.split` asks to score: "test" or "val"."""
  split = config.eval.get("split", "test")
  if split not in ("test", "val"):
    raise DataError(f"eval.split: {split!r}; use test or val")
  subjects = subjects_lib.load_subjects(config.data)[split]
  if not subjects:
    raise DataError(f"eval.split={split}: the data has no {split} subjects "
                    f"(data.num_{split})")
  return split, subjects


def evaluate(config, workdir: str | pathlib.Path, out: str | os.PathLike | None = None) -> str:
  """Evaluates `workdir` on the test (or validation) subjects; returns the Markdown it wrote.

  The config is one run (a comparison's runs: `evaluate_comparison`): its checkpoint
  `eval.checkpoint` against tricubic and zero-filling, written as
  `eval/table.md`, `eval/table.json` (a list of {"method", "scale", "psnr",
  "ssim", ...} means over subjects) and `eval/per_subject.json` (one row per
  subject, volume, method and scale); `eval.split=val` scores the validation
  subjects instead and writes `eval/val/`. `out` replaces WORKDIR/eval (checked
  writable before any scoring).
  """
  workdir = pathlib.Path(workdir)
  split, subjects = scored_subjects(config)
  out_dir = eval_dir(workdir, split, out)
  run = load_run(workdir, checkpoint_choice(config.eval.checkpoint), family_steps=[step_lib])
  methods = classical_methods()
  name = run.config.model.kind
  methods[name] = trained_method(name, run, config.eval)
  write_run_record(out_dir / "run.json", config, checkpoint_step=run.step,
                   split=split, subjects=[s.name for s in subjects])
  rows = []
  for subject in tqdm(subjects, desc="evaluate", dynamic_ncols=True):
    rows += score_subject(methods, subject, scales=config.eval.scales,
                          num_volumes=config.eval.num_volumes)[0]
  table = tables.summarise(rows)
  text = tables.markdown_table(table)
  files.write_json(out_dir / "per_subject.json", rows)
  files.write_json(out_dir / "table.json", table)
  files.write_text(out_dir / "table.md", text)
  tqdm.write(f"Evaluated checkpoint step {run.step} on {len(subjects)} {split} subject(s): "
             f"{', '.join(s.name for s in subjects)}")
  return text
