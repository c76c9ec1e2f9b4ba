"""Signed DTI errors of an arbitrary-scale model's 4D output against the HR truth.

What users compute next from a super-resolved DWI is a tensor fit. A model that
sharpens may also bias FA (edges invented in noise raise it; blur lowers it), and
only a truth can tell resolution from bias. On the embedded test subjects
(`jaxsr.dmri.data.subjects`, the comparison's data), each subject's shell volumes
(`dti_volumes` spread over the sphere) are degraded by `scale` with the training
degradation (anti-aliased cubic), restored by tricubic interpolation and by the
model as `jaxsr upsample` runs it (the whole 4D series, `--psf auto`), and
tensors are fitted (`jaxsr.dmri.dti`) on each and on the HR volumes. Reported per
method and tissue (white matter from the phantom's labels; the rest of the brain
mask): the mean signed FA and MD error (output − truth; MD in 10⁻³ mm²/s) and
their RMSE, as mean ± sd over the subjects, the independent unit.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxsr import files
from jaxsr.dmri import dti
from jaxsr.dmri.app import upsample
from jaxsr.dmri.app.model import load_upsampler
from jaxsr.dmri.data import subjects as subjects_lib
from jaxsr.dmri.degradation.degrade import degrade, lr_shape_for_scale, tricubic_upsample
from jaxsr.train.run_record import write_run_record

TISSUES = ("white matter", "rest of brain")


def signed_errors(fa, md, fa_truth, md_truth, region: np.ndarray) -> dict:
  """Mean signed and RMS FA and MD (10⁻³ mm²/s) errors inside `region` (bool)."""
  dfa = fa[region] - fa_truth[region]
  dmd = (md[region] - md_truth[region]) * 1e3
  return {"fa_bias": float(dfa.mean()), "fa_rmse": float(np.sqrt(np.mean(dfa ** 2))),
          "md_bias": float(dmd.mean()), "md_rmse": float(np.sqrt(np.mean(dmd ** 2)))}


def subject_rows(subject, upsampler, scale: float, dti_volumes: int, max_memory: int
                 ) -> list[dict]:
  """{"subject", "method", "tissue", errors...} rows of one subject."""
  fitted = dti.spread_directions(subject.bvecs, dti_volumes)
  mask = np.asarray(subject.mask)
  hr = np.stack([np.asarray(subject.dwi[..., v], np.float32) for v in fitted], -1)
  fa_truth, md_truth = dti.tensor_maps(hr, subject.bvecs[fitted], subject.bval, mask)
  wm = (np.asarray(subject.wm_mask) if subject.wm_mask is not None
        else mask & (fa_truth > 0.2)) & mask
  regions = {"white matter": wm, "rest of brain": mask & ~wm}
  lr_shape = lr_shape_for_scale(mask.shape, scale)
  lr = np.stack([np.asarray(degrade(hr[..., i], lr_shape)) for i in range(hr.shape[-1])], -1)
  factors = np.array(mask.shape) / np.array(lr_shape)
  lr_affine = subject.affine @ np.diag([*factors, 1.0])
  outputs = {
      "tricubic": np.stack([np.asarray(tricubic_upsample(lr[..., i], mask.shape))
                            for i in range(lr.shape[-1])], -1),
      "model": upsample.upsample(lr, lr_affine, upsampler, shape=mask.shape,
                                 max_memory=max_memory)[0] * mask[..., None],
  }
  rows = []
  for method, output in outputs.items():
    fa, md = dti.tensor_maps(output, subject.bvecs[fitted], subject.bval, mask)
    for tissue, region in regions.items():
      rows.append({"subject": subject.name, "method": method, "tissue": tissue,
                   **signed_errors(fa, md, fa_truth, md_truth, region)})
  return rows


def markdown(rows: list[dict]) -> str:
  """Per method and tissue: each error as mean ± sd over subjects."""
  subjects = sorted({r["subject"] for r in rows})
  lines = [f"Signed DTI errors over {len(subjects)} subjects (mean ± sd over subjects; output − "
           "truth; MD in 10⁻³ mm²/s)", "",
           "| method | tissue | FA bias | FA RMSE | MD bias | MD RMSE |",
           "|---|---|---|---|---|---|"]
  for method in dict.fromkeys(r["method"] for r in rows):
    for tissue in TISSUES:
      chosen = [r for r in rows if r["method"] == method and r["tissue"] == tissue]
      cells = []
      for key in ("fa_bias", "fa_rmse", "md_bias", "md_rmse"):
        values = np.array([r[key] for r in chosen])
        sign = "+" if key.endswith("bias") else ""
        spread = values.std(ddof=1) if len(values) > 1 else 0.0
        cells.append(f"{values.mean():{sign}.4f} ± {spread:.4f}")
      lines.append(f"| {method} | {tissue} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def evaluate(config, workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """Writes WORKDIR/eval/dti_bias.{md,json} (and the run record); returns the table."""
  out_dir = pathlib.Path(out) if out else pathlib.Path(workdir) / "eval"
  files.check_can_create(out_dir)
  write_run_record(out_dir / "dti_bias_run.json", config)
  upsampler = load_upsampler(config.checkpoint or None)
  subjects = subjects_lib.load_subjects(config.data)["test"]
  rows = []
  for subject in subjects:
    rows += subject_rows(subject, upsampler, float(config.scale), int(config.dti_volumes),
                         int(config.max_memory))
  text = (f"Model {upsampler.run_dir} (step {upsampler.step}), {config.scale:g}x\n\n"
          + markdown(rows))
  files.write_text(out_dir / "dti_bias.md", text)
  files.write_json(out_dir / "dti_bias.json", {"model": upsampler.run_dir,
                                               "step": upsampler.step, "rows": rows})
  return text
