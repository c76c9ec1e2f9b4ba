"""Whole-volume evaluation of a trained CSR-dMRI run on the test subjects (the paper's Table 1).

For each test subject, each evaluated b-shell volume and each scale s, the HR
volume (N voxels per axis) is degraded to an LR grid of round(N / s) voxels
(`jaxsr.data.degrade`, the training degradation), the DWI and the T1 alike, then
brought back to the HR grid by tricubic interpolation, by k-space zero-filling
and by the model. PSNR and
3D SSIM are computed inside the brain mask against the HR truth, averaged over
the subject's volumes, then over subjects.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from tqdm import tqdm

from jaxsr import metrics
from jaxsr.data import subjects as subjects_lib
from jaxsr.data.degrade import degrade, kspace_zero_fill, lr_shape_for_scale, tricubic_upsample
from jaxsr.inference import reconstruct
from jaxsr.models import build_model
from jaxsr.train import step as step_lib
from jaxsr.train.checkpoint import Checkpointer
from jaxsr.train.run_record import write_run_record

METHODS = ("tricubic", "zero_fill", "csr_dmri")


def restore_params(config, workdir: str | pathlib.Path):
  """(model, params, step) from the latest checkpoint in `workdir`."""
  checkpointer = Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint found; train first with train.py "
                            f"--workdir {workdir}")
  model = build_model(config.model)
  rng = jax.random.PRNGKey(0)  # shapes only: nothing is initialised
  abstract_state = jax.eval_shape(lambda: step_lib.create_train_state(model, config, rng))
  state, _ = checkpointer.restore(step, abstract_state, jax.eval_shape(lambda: rng))
  checkpointer.close()
  return model, state.params, step


def evaluated_volumes(num_volumes: int, available: int) -> list[int]:
  """`num_volumes` b-shell volume indices spread evenly over the `available` ones."""
  count = min(num_volumes, available)
  return sorted({int(i) for i in np.linspace(0, available - 1, count).round()})


def score_subject(model, params, subject, *, use_t1: bool, scales, num_volumes: int,
                  chunk_size: int) -> list[dict]:
  """Per-scale, per-method PSNR/SSIM of one subject, averaged over its evaluated volumes."""
  hr_shape = subject.mask.shape
  mask = np.asarray(subject.mask)
  rows = []
  for scale in scales:
    lr_shape = lr_shape_for_scale(hr_shape, scale)
    lr_t1 = [np.asarray(degrade(np.asarray(subject.t1, np.float32), lr_shape))] if use_t1 else []
    scores = {m: {"psnr": [], "ssim": []} for m in METHODS}
    for v in evaluated_volumes(num_volumes, subject.dwi.shape[-1]):
      truth = np.asarray(subject.dwi[..., v], np.float32)
      lr_dwi = np.asarray(degrade(truth, lr_shape))
      lr = np.stack([lr_dwi] + lr_t1, axis=-1)  # channels: DWI, then T1 if the model takes it
      outputs = {"tricubic": np.asarray(tricubic_upsample(lr_dwi, hr_shape)),
                 "zero_fill": kspace_zero_fill(lr_dwi, hr_shape),
                 "csr_dmri": reconstruct(model, params, lr, hr_shape, chunk_size)}
      for method, output in outputs.items():
        scores[method]["psnr"].append(metrics.psnr(output, truth, mask))
        scores[method]["ssim"].append(metrics.ssim(output, truth, mask))
    rows += [{"subject": subject.name, "method": m, "scale": float(scale),
              "psnr": float(np.mean(s["psnr"])), "ssim": float(np.mean(s["ssim"]))}
             for m, s in scores.items()]
  return rows


def summarise(rows: list[dict]) -> list[dict]:
  """Mean and std over subjects for each (method, scale)."""
  table = []
  for method in dict.fromkeys(r["method"] for r in rows):
    for scale in sorted({r["scale"] for r in rows}, key=lambda s: (s != int(s), s)):
      sel = [r for r in rows if r["method"] == method and r["scale"] == scale]
      table.append({"method": method, "scale": scale,
                    "psnr": float(np.mean([r["psnr"] for r in sel])),
                    "ssim": float(np.mean([r["ssim"] for r in sel])),
                    "psnr_std": float(np.std([r["psnr"] for r in sel])),
                    "ssim_std": float(np.std([r["ssim"] for r in sel])),
                    "num_subjects": len(sel)})
  return table


def markdown_table(table: list[dict]) -> str:
  """Methods x scales, PSNR (dB) and SSIM, the best of each column in bold."""
  scales = list(dict.fromkeys(r["scale"] for r in table))
  methods = list(dict.fromkeys(r["method"] for r in table))
  cell = {(r["method"], r["scale"]): r for r in table}
  best = {(s, k): max(cell[m, s][k] for m in methods) for s in scales for k in ("psnr", "ssim")}
  header = "| method | " + " | ".join(f"{s:g}× PSNR | {s:g}× SSIM" for s in scales) + " |"
  lines = [header, "|---" * (1 + 2 * len(scales)) + "|"]
  for m in methods:
    values = []
    for s in scales:
      for k, fmt in (("psnr", "{:.4f}"), ("ssim", "{:.4f}")):
        text = fmt.format(cell[m, s][k])
        values.append(f"**{text}**" if cell[m, s][k] == best[s, k] else text)
    lines.append(f"| {m} | " + " | ".join(values) + " |")
  return "\n".join(lines) + "\n"


def evaluate(config, workdir: str | pathlib.Path) -> list[dict]:
  """Scores the latest checkpoint of `workdir` on the test subjects; writes `workdir/eval/`.

  Writes `eval/table.md`, `eval/table.json` (a list of {"method", "scale", "psnr",
  "ssim", ...} means over test subjects), `eval/per_subject.json` and
  `eval/run.json`. Returns the table rows.
  """
  workdir = pathlib.Path(workdir)
  model, params, step = restore_params(config, workdir)
  test_subjects = subjects_lib.load_subjects(config.data)["test"]
  out_dir = workdir / "eval"
  write_run_record(out_dir / "run.json", config, checkpoint_step=step,
                   test_subjects=[s.name for s in test_subjects])
  rows = []
  for subject in tqdm(test_subjects, desc="evaluate", dynamic_ncols=True):
    rows += score_subject(model, params, subject, use_t1=config.model.in_channels == 2,
                          scales=config.eval.scales, num_volumes=config.eval.num_volumes,
                          chunk_size=config.eval.chunk_size)
  table = summarise(rows)
  text = markdown_table(table)
  (out_dir / "per_subject.json").write_text(json.dumps(rows, indent=2) + "\n")
  (out_dir / "table.json").write_text(json.dumps(table, indent=2) + "\n")
  (out_dir / "table.md").write_text(text)
  tqdm.write(f"Evaluated checkpoint step {step} on {len(test_subjects)} test subject(s): "
             f"{', '.join(s.name for s in test_subjects)}")
  return table
