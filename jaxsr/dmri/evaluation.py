"""Whole-volume evaluation on the test subjects: one run, or a comparison of runs (the paper's tables).

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
import json
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
from jaxsr.dmri.models import is_implicit
from jaxsr.dmri.inference.reconstruct import reconstruct, reconstruct_fixed_scale
from jaxsr.nifti import DataError
from jaxsr.train import distributed
from jaxsr.train.checkpoint import CheckpointError, TrainedRun, load_run, model_variables, run_dir
from jaxsr.train.run_record import METRICS_FILE, git_commit, read_metrics, write_run_record

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


# Bumped when what a score record holds or how its scores are computed changes.
SCORES_VERSION = 1


def scores_key(config, split: str, subjects) -> dict:
  """What a comparison method's scores depend on besides the method: the split and its
  subjects, the data set and the evaluation settings (not chunk or tile sizes, which
  change only the float rounding)."""
  data = {k: v for k, v in config.data.to_dict().items() if k != "cache_dir"}
  e = config.eval
  key = {"version": SCORES_VERSION, "split": split, "subjects": [s.name for s in subjects],
         "data": data, "scales": [float(s) for s in e.scales], "num_volumes": int(e.num_volumes),
         "dti_scales": [float(s) for s in e.dti_scales], "dti_volumes": int(e.dti_volumes)}
  return json.loads(files.json_text(key, default=str))


def scores_dir(config, out_dir: pathlib.Path, split: str) -> pathlib.Path:
  """`eval.scores_dir`/<split> if set, else OUT/scores."""
  configured = config.eval.get("scores_dir")
  return pathlib.Path(configured).expanduser() / split if configured else out_dir / "scores"


def training_record(directory: pathlib.Path) -> dict | None:
  """A run's `run.json` (config, seed, versions, commit of its training), if it has one, with
  the last line of its metrics (`final_metrics`: step, loss, `elapsed_s`) where it has them."""
  path = pathlib.Path(directory) / "run.json"
  if not path.exists():
    return None
  record = json.loads(path.read_text())
  metrics = read_metrics(pathlib.Path(directory) / METRICS_FILE)
  if metrics:
    record["final_metrics"] = metrics[-1]
  return record


def same_training(record: dict, trained: dict | None) -> bool:
  """Whether a score record was made from a run trained with the config in `trained` (the
  run's training record; a run retrained with another config may reach the same step)."""
  kept = record.get("training_run") or {}
  return (kept.get("config") == (trained or {}).get("config"))


class ScoreRecords:
  """One JSON record per method (and seed) of a comparison: its score rows, the checkpoint
  step they were made from, its Table 2 flags and the run's training record, under the
  `key` of the evaluation that made them (`scores_key`); a record under another key is
  not read."""

  def __init__(self, folder: pathlib.Path, key: dict):
    self.folder, self.key = pathlib.Path(folder), key

  def path(self, label: str) -> pathlib.Path:
    return self.folder / f"{label.replace('/', '.')}.json"

  def read(self, label: str) -> dict | None:
    path = self.path(label)
    if not path.exists():
      return None
    record = json.loads(path.read_text())
    return record if record.get("key") == self.key else None

  def write(self, label: str, method: Method, rows: list[dict], dti_rows: list[dict],
            step: int | None, trained: dict | None) -> dict:
    record = {"label": label, "key": self.key, "checkpoint_step": step, "t1": method.t1,
              "fft_loss": method.fft_loss, "evaluated_at_commit": git_commit(),
              "training_run": trained, "rows": rows, "dti_rows": dti_rows}
    text = files.json_text(record, indent=1, default=str) + "\n"
    with files.write_errors(self.folder):
      self.folder.mkdir(parents=True, exist_ok=True)
    files.write_text(self.path(label), text)
    return json.loads(text)


def complete_figure(figure: FigureData, config, subject, loaded: dict[str, Method | None],
                    inputs: dict) -> FigureData | None:
  """`figure` with the outputs of table 1's methods it has none of (their scores came from
  records), recomputed on `subject` at the figure's scale from `loaded` (table 1's methods
  by name, None where the run is not here: then no figures, None)."""
  missing = {name: loaded[name] for name in config.table1 if name not in figure.outputs}
  absent = [name for name, method in missing.items() if method is None]
  if absent:
    tqdm.write(f"no figures: they need the checkpoints of table 1's runs {absent}")
    return None
  if missing:
    score_subject(missing, subject, scales=(figure.scale,), num_volumes=config.eval.num_volumes,
                  dti_scales=[s for s in config.eval.dti_scales if float(s) == figure.scale],
                  dti_volumes=config.eval.dti_volumes, figure=figure, inputs=inputs)
  return figure


def evaluate_comparison(config, workdir: str | pathlib.Path, out: str | os.PathLike | None = None
                ) -> str:
  """Tables 1 and 2, Wilcoxon tests, DTI errors and figures for the runs of a comparison config.

  Every run is read at `eval.checkpoint` for each of `config.seeds` (WORKDIR/<name>/seed<s>).
  Each method's scores (one record per method and seed: its rows, checkpoint step and the
  run's training record) are kept in `eval.scores_dir` (default: the output folder's
  `scores/`; set: its `<split>/` subfolder) and reused while the evaluation settings,
  subjects, checkpoint step and training config are the same, also where the run is not on
  this machine, so that a comparison can be scored run by run as its runs finish and the
  records kept.
  Writes under `WORKDIR/eval/` (`eval.split=val`: `WORKDIR/eval/val/`): `table1.md`
  (config.table1 methods × scales, PSNR/SSIM as mean over seeds ± sd over seeds, best in
  bold, p-values of config.reference against each method over subjects), `table2.md` (the
  ablations, config.table2, with their T1 / FFT-loss flags), `dti.md` (FA and MD RMSE in
  the WM mask), `runs.md` (each run and seed: steps, checkpoint scored, training time,
  commit, mean PSNR), `tables.json` (everything, including per-volume scores), `figures/*.png`
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
  scores = ScoreRecords(scores_dir(config, out_dir, split), scores_key(config, split, subjects))
  methods, records, steps = {}, {}, {}
  figure_methods = {}  # table 1's methods of the first seed, None where the run is not here
  for name in names:
    for seed in ([None] if name in classical else seeds):
      label = name if seed is None else f"{name}/seed{seed}"
      record = scores.read(label)
      if name in classical:
        method, step, trained = classical[name], None, None
        figure_methods[name] = method
      else:
        directory = run_dir(config, workdir, name, seed)
        try:
          run = load_run(directory, choice, families=[step_lib])
        except CheckpointError as error:
          if record is None:
            raise
          tqdm.write(f"{label}: scores from {scores.path(label)} (checkpoint step "
                     f"{record['checkpoint_step']}); the run is not readable here: {error}")
          records[label] = record
          steps.setdefault(name, {})[str(seed)] = record["checkpoint_step"]
          figure_methods.setdefault(name, None)
          continue
        method, step = trained_method(name, run, config.eval, seed), run.step
        figure_methods.setdefault(name, method)
        trained = training_record(directory)
        steps.setdefault(name, {})[str(seed)] = step
      if record is not None and record["checkpoint_step"] == step and same_training(record,
                                                                                    trained):
        records[label] = record
      else:
        methods[label] = (method, step, trained)
  write_run_record(out_dir / "run.json", config, checkpoint_steps=steps, split=split,
                   subjects=[s.name for s in subjects], reused_scores=sorted(records))
  tqdm.write(evaluation_cost(config, subjects, len(methods)) + (
      f"; {len(records)} method(s) and seed(s) from their score records" if records else ""))
  figure = None
  if config.eval.figures:
    volume = evaluated_volumes(config.eval.num_volumes, subjects[0].dwi.shape[-1])[0]
    figure = FigureData(float(config.eval.figure_scale), volume,
                        np.asarray(subjects[0].dwi[..., volume], np.float32),
                        np.asarray(subjects[0].mask))
  inputs = {s.name: {} for s in subjects}  # LR volumes and truth tensors, made once
  settings = dict(scales=config.eval.scales, num_volumes=config.eval.num_volumes,
                  dti_scales=config.eval.dti_scales, dti_volumes=config.eval.dti_volumes)
  progress = tqdm(total=len(subjects) * len(config.eval.scales) * len(methods),
                  desc="evaluate", dynamic_ncols=True)
  with progress:
    for label, (method, step, trained) in methods.items():
      rows, dti_rows = [], []
      for i, subject in enumerate(subjects):
        in_figure = i == 0 and method.seed in (None, seeds[0])
        subject_rows, subject_dti = score_subject(
            {label: method}, subject, **settings, figure=figure if in_figure else None,
            progress=progress, inputs=inputs[subject.name])
        rows += subject_rows
        dti_rows += subject_dti
      records[label] = scores.write(label, method, rows, dti_rows, step, trained)
  if figure is not None:
    figure = complete_figure(figure, config, subjects[0], figure_methods,
                             inputs[subjects[0].name])
  rows = [row for label in records for row in records[label]["rows"]]
  dti_rows = [row for label in records for row in records[label]["dti_rows"]]
  flags = {"T1": {}, "FFT loss": {}}
  for label, record in records.items():
    name = label.split("/")[0]
    flags["T1"][name] = "✓" if record.get("t1") else ""
    flags["FFT loss"][name] = "✓" if record.get("fft_loss") else ""

  table = tables.summarise(rows)
  pvalues = tables.wilcoxon(rows, config.reference)
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
  text_runs = runs_markdown(records, names)
  files.write_text(out_dir / "runs.md", text_runs)
  texts.append(text_runs)
  files.write_json(out_dir / "tables.json", result)
  if figure is not None:
    write_figures(figure, config.table1, out_dir / "figures", subjects[0].name)
  return "\n".join(texts)


def runs_markdown(records: dict[str, dict], names: list[str]) -> str:
  """One row per trained run and seed of the score `records` (labels "<name>/seed<s>", rows
  in the order of `names`, then by seed): its steps trained, the checkpoint scored, its
  training wall time (`elapsed_s`, minutes), the commit it was trained at and its mean test
  PSNR over the scored volumes and scales."""
  lines = ["## Runs\n", "| run | seed | steps trained | checkpoint scored | training, min "
           "| trained at | mean PSNR, dB |", "|---" * 7 + "|"]
  runs = [label.split("/seed") for label in records if "/seed" in label]
  for name, seed in sorted(runs, key=lambda run: (names.index(run[0]), int(run[1]))):
    record = records[f"{name}/seed{seed}"]
    trained = record.get("training_run") or {}
    final = trained.get("final_metrics") or {}
    minutes = f"{final['elapsed_s'] / 60:.1f}" if "elapsed_s" in final else ""
    psnr = np.mean([row["psnr"] for row in record["rows"]])
    lines.append(f"| {name} | {seed} | {final.get('step', '')} | {record['checkpoint_step']} | "
                 f"{minutes} | {str(trained.get('git_commit', ''))[:7]} | {psnr:.4f} |")
  return "\n".join(lines) + "\n"


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
