"""The comparison of runs (the paper's tables): Tables 1 and 2 with Wilcoxon tests, DTI
errors, the runs' list and figures, from score records (`records`) made by the protocol
(`protocol`)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from tqdm import tqdm

from jaxsr import files, tables
from jaxsr.dmri import dti
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.evaluation.protocol import (FigureData, Method, checkpoint_choice,
                                            classical_methods, eval_dir, evaluated_volumes,
                                            score_subject, scored_subjects, trained_method)
from jaxsr.dmri.evaluation.records import (ScoreRecords, same_training, scores_dir, scores_key,
                                           training_record)
from jaxsr.train.checkpoint import CheckpointError, load_run, run_dir
from jaxsr.train.run_record import write_run_record


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
  names = _method_names(config, classical)
  seeds = [int(s) for s in config.seeds] if config.get("seeds") else [None]
  scores = ScoreRecords(scores_dir(config, out_dir, split), scores_key(config, split, subjects))
  methods, records, steps, figure_methods = _gather(config, workdir, names, classical, seeds,
                                                    scores)
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
  records.update(_score(config, methods, subjects, seeds, scores, figure, inputs))
  if figure is not None:
    figure = complete_figure(figure, config, subjects[0], figure_methods,
                             inputs[subjects[0].name])
  texts = _write_tables(config, records, names, steps, split, subjects, out_dir)
  if figure is not None:
    write_figures(figure, config.table1, out_dir / "figures", subjects[0].name)
  return "\n".join(texts)


def _method_names(config, classical: dict) -> list[str]:
  """Tables 1 and 2's methods, in order; ValueError for a name neither classical nor a run,
  or a figure scale that is not scored."""
  names = list(dict.fromkeys([*config.table1, *config.table2]))
  unknown = [n for n in names if n not in classical and n not in config.runs]
  if unknown:
    raise ValueError(f"table methods {unknown} are neither classical ({sorted(classical)}) "
                     f"nor runs of the config ({sorted(config.runs)})")
  if config.eval.figures and float(config.eval.figure_scale) not in map(float, config.eval.scales):
    raise ValueError(f"eval.figure_scale {config.eval.figure_scale} is not one of eval.scales "
                     f"{tuple(config.eval.scales)}")
  return names


def _gather(config, workdir: pathlib.Path, names: list[str], classical: dict, seeds: list,
            scores: ScoreRecords) -> tuple[dict, dict, dict, dict]:
  """Per method and seed, its score record where one still holds, else the method to score.

  Returns (methods to score {label: (method, step, training record)}, reused records
  {label: record}, checkpoint steps {name: {seed: step}}, table 1's methods of the first
  seed for the figures {name: method or None where the run is not here}).
  """
  choice = checkpoint_choice(config.eval.checkpoint)
  methods, records, steps, figure_methods = {}, {}, {}, {}
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
          run = load_run(directory, choice, family_steps=[step_lib])
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
  return methods, records, steps, figure_methods


def _score(config, methods: dict, subjects, seeds: list, scores: ScoreRecords,
           figure: FigureData | None, inputs: dict) -> dict[str, dict]:
  """Scores each method on every subject (the first subject's outputs go into `figure`) and
  writes its record; returns {label: record}."""
  settings = dict(scales=config.eval.scales, num_volumes=config.eval.num_volumes,
                  dti_scales=config.eval.dti_scales, dti_volumes=config.eval.dti_volumes)
  records = {}
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
  return records


def _write_tables(config, records: dict, names: list[str], steps: dict, split: str, subjects,
                  out_dir: pathlib.Path) -> list[str]:
  """Writes table1.md, table2.md, dti.md, runs.md and tables.json from the score `records`;
  returns their Markdown."""
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
  return texts


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
