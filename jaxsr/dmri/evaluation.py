"""Whole-volume evaluation on the test subjects: one run, or a comparison of runs (the paper's tables).

Protocol: for each test subject, each scored b-shell volume and each scale s,
the HR volume (N voxels per axis) is degraded to an LR grid of round(N / s)
voxels (`jaxsr.dmri.degrade.degrade`, the training degradation), the DWI and
the T1 alike, then brought back onto the HR grid by every method. PSNR and 3D
SSIM are computed inside the brain mask against the HR truth.

Methods:
  tricubic, zero_fill  classical interpolation (Keys cubic; k-space zero-filling).
  implicit runs        (`model.kind` csr_dmri, with or without T1): encoder on the
                       LR input, decoder at every HR voxel centre, any scale.
  fixed-scale runs     (dcsrn, rescnn3d) trained at scale t: the CNN on the LR DWI
                       interpolated onto t times the LR grid, then resampled onto the
                       HR grid (`jaxsr.dmri.reconstruct.reconstruct_fixed_scale`).

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
from jaxsr.dmri import subjects as subjects_lib
from jaxsr.dmri.degrade import degrade, lr_shape_for_scale, tricubic_upsample
from jaxsr.dmri.models import is_implicit
from jaxsr.dmri.reconstruct import reconstruct, reconstruct_fixed_scale
from jaxsr.nifti import DataError
from jaxsr.train import distributed
from jaxsr.train.checkpoint import CheckpointError, TrainedRun, load_run, model_variables, run_dir
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
                  progress: tqdm | None = None) -> tuple[list[dict], list[dict]]:
  """PSNR/SSIM per (method, scale, scored volume) and FA/MD RMSE per (method, scale in `dti_scales`).

  At a scale in `dti_scales` the shell's volumes of `dti.spread_directions(bvecs,
  dti_volumes)` (0: all) are super-resolved, tensors are fitted on them and on the
  same HR volumes, and FA/MD are compared inside the subject's WM mask (without one:
  truth FA > 0.2 in the brain). `figure`, if given, is filled with the outputs at its
  scale and volume (of the first seed of a method trained with several).
  """
  hr_shape = subject.mask.shape
  mask = np.asarray(subject.mask)
  num_shell = subject.dwi.shape[-1]
  scored = evaluated_volumes(num_volumes, num_shell)
  dti_scales = [float(s) for s in dti_scales]
  fitted = dti.spread_directions(subject.bvecs, dti_volumes)
  if dti_scales:
    fa_truth, md_truth = dti.tensor_maps(np.stack([subject.dwi[..., v] for v in fitted], -1),
                                         subject.bvecs[fitted], subject.bval, mask)
    wm = (np.asarray(subject.wm_mask) if subject.wm_mask is not None
          else mask & (fa_truth > WM_FA_THRESHOLD))
  rows, dti_rows = [], []
  t1 = np.asarray(subject.t1, np.float32)
  for scale in scales:
    with_dti = float(scale) in dti_scales
    needed = sorted(set(fitted) | set(scored)) if with_dti else scored
    lr_shape = lr_shape_for_scale(hr_shape, scale)
    lr_t1 = (np.asarray(degrade(t1, lr_shape)) if any(m.uses_t1 for m in methods.values())
             else None)
    lr_dwi = {v: np.asarray(degrade(np.asarray(subject.dwi[..., v], np.float32), lr_shape))
              for v in needed}
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
  run = load_run(workdir, checkpoint_choice(config.eval.checkpoint), families=[step_lib])
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


def evaluate_comparison(config, workdir: str | pathlib.Path, out: str | os.PathLike | None = None
                ) -> str:
  """Tables 1 and 2, Wilcoxon tests, DTI errors and figures for the runs of a comparison config.

  Every run is read at `eval.checkpoint` for each of `config.seeds` (WORKDIR/<name>/seed<s>).
  Writes under `WORKDIR/eval/` (`eval.split=val`: `WORKDIR/eval/val/`): `table1.md`
  (config.table1 methods × scales, PSNR/SSIM as mean over seeds ± sd over seeds, best in
  bold, p-values of config.reference against each method over subjects), `table2.md` (the
  ablations, config.table2, with their T1 / FFT-loss flags), `dti.md` (FA and MD RMSE in
  the WM mask), `tables.json` (everything, including per-volume scores), `figures/*.png`
  and `run.json` (`out` replaces WORKDIR/eval). Returns the Markdown.
  """
  workdir = pathlib.Path(workdir)
  split, subjects = scored_subjects(config)
  out_dir = eval_dir(workdir, split, out)
  classical = classical_methods()
  names = list(dict.fromkeys([*config.table1, *config.table2]))
  unknown = [n for n in names if n not in classical and n not in config.runs]
  if unknown:
    raise ValueError(f"table methods {unknown} are neither classical ({sorted(classical)}) "
                     f"nor runs of the config ({sorted(config.runs)})")
  if config.eval.figures and float(config.eval.figure_scale) not in map(float, config.eval.scales):
    raise ValueError(f"eval.figure_scale {config.eval.figure_scale} is not one of eval.scales "
                     f"{tuple(config.eval.scales)}")
  choice = checkpoint_choice(config.eval.checkpoint)
  seeds = [int(s) for s in config.seeds] if config.get("seeds") else [None]
  methods, steps = {}, {}
  for name in names:
    if name in classical:
      methods[name] = classical[name]
      continue
    for seed in seeds:
      run = load_run(run_dir(config, workdir, name, seed), choice, families=[step_lib])
      methods[name if seed is None else f"{name}/seed{seed}"] = trained_method(
          name, run, config.eval, seed)
      steps.setdefault(name, {})[str(seed)] = run.step
  write_run_record(out_dir / "run.json", config, checkpoint_steps=steps, split=split,
                   subjects=[s.name for s in subjects])
  figure = None
  rows, dti_rows = [], []
  tqdm.write(evaluation_cost(config, subjects, len(methods)))
  progress = tqdm(total=len(subjects) * len(config.eval.scales) * len(methods),
                  desc="evaluate", dynamic_ncols=True)
  with progress:
    for i, subject in enumerate(subjects):
      if i == 0 and config.eval.figures:
        volume = evaluated_volumes(config.eval.num_volumes, subject.dwi.shape[-1])[0]
        figure = FigureData(float(config.eval.figure_scale), volume,
                            np.asarray(subject.dwi[..., volume], np.float32),
                            np.asarray(subject.mask))
      subject_rows, subject_dti = score_subject(
          methods, subject, scales=config.eval.scales, num_volumes=config.eval.num_volumes,
          dti_scales=config.eval.dti_scales, dti_volumes=config.eval.dti_volumes,
          figure=figure if i == 0 else None, progress=progress)
      rows += subject_rows
      dti_rows += subject_dti

  table = tables.summarise(rows)
  pvalues = tables.wilcoxon(rows, config.reference)
  flags = {"T1": {m.name: "✓" if m.t1 else "" for m in methods.values()},
           "FFT loss": {m.name: "✓" if m.fft_loss else "" for m in methods.values()}}
  text1 = ("## Table 1: methods × scales (PSNR dB, SSIM)\n\n"
           + tables.markdown_table(table, methods=config.table1) + "\n"
           + tables.markdown_pvalues(pvalues, methods=config.table1))
  text2 = ("## Table 2: ablations (PSNR dB, SSIM)\n\n"
           + tables.markdown_table(table, methods=config.table2, extra_columns=flags) + "\n"
           + tables.markdown_pvalues(pvalues, methods=config.table2))
  files.write_text(out_dir / "table1.md", text1)
  files.write_text(out_dir / "table2.md", text2)
  result = {"table": table, "wilcoxon": pvalues, "per_volume": rows, "checkpoint_steps": steps,
            "split": split, "subjects": [s.name for s in subjects]}
  texts = [text1, text2]
  if config.eval.dti_scales:
    dti_table = tables.summarise(dti_rows, keys=("fa_rmse", "md_rmse"))
    text_dti = ("## DTI-metric errors in white matter (FA RMSE; MD RMSE in 10⁻³ mm²/s)\n\n"
                + tables.markdown_table(dti_table, metrics=tables.DTI_METRICS, methods=names))
    files.write_text(out_dir / "dti.md", text_dti)
    result.update(dti=dti_table, dti_per_subject=dti_rows)
    texts.append(text_dti)
  files.write_json(out_dir / "tables.json", result)
  if figure is not None:
    write_figures(figure, config.table1, out_dir / "figures", subjects[0].name)
  return "\n".join(texts)


def evaluation_cost(config, subjects, num_methods: int) -> str:
  """One line: how many whole volumes the comparison super-resolves (its cost on a CPU is
  about that times one reconstruction's time: docs/results_dmri.md)."""
  dti_scales = {float(s) for s in config.eval.dti_scales}
  count = 0
  for subject in subjects:
    num_shell = subject.dwi.shape[-1]
    scored = set(evaluated_volumes(config.eval.num_volumes, num_shell))
    fitted = set(dti.spread_directions(subject.bvecs, config.eval.dti_volumes))
    count += sum(len(scored | fitted) if float(s) in dti_scales else len(scored)
                 for s in config.eval.scales)
  return (f"evaluate: {count * num_methods:,} volume reconstructions ({num_methods} methods and "
          f"seeds × {len(subjects)} subjects × {len(config.eval.scales)} scales, "
          f"{config.eval.num_volumes or 'all'} scored volumes; tensors at "
          f"{sorted(dti_scales) or 'no'} scale(s) from {config.eval.dti_volumes or 'all'}"
          " volumes); bound it with --config.eval.num_volumes, eval.scales, eval.dti_scales, "
          "eval.dti_volumes")


def write_figures(figure: FigureData, method_names, out_dir: pathlib.Path, subject: str) -> None:
  """Slice comparison, error maps and (with DTI) FA maps of `figure` for `method_names`."""
  from jaxsr.dmri import figures  # matplotlib on use: it slows every command's start-up

  label = f"{subject}, volume {figure.volume}, {figure.scale:g}×"
  outputs = {m: figure.outputs[m] for m in method_names}
  figures.slice_comparison(outputs, figure.truth, figure.mask, figure.scores,
                           out_dir / f"slices_{figure.scale:g}x.png", title=label)
  figures.error_maps(outputs, figure.truth, figure.mask,
                     out_dir / f"errors_{figure.scale:g}x.png", title=f"|SR − HR|, {label}")
  if figure.fa:
    figures.fa_comparison({m: figure.fa[m] for m in method_names}, figure.fa_truth, figure.mask,
                          out_dir / f"fa_{figure.scale:g}x.png",
                          title=f"FA, {subject}, {figure.scale:g}×", rmse=figure.fa_rmse)
