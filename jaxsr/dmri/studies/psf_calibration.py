"""`--psf auto`'s thresholds for one model, fitted on rendered volumes whose PSF is known.

`auto` (`jaxsr.dmri.degradation.acquisition`) degrades the model's PSF-blind output with
k-space truncation and with spatial PSFs and compares how well each reproduces the input:
a group takes k-space when truncation's residual is at most the best spatial one times a
threshold. Where that cut lies depends on the model (how closely its blind output follows
the input inside the measured band), so each model gets its own:

  1. the calibration volumes (`real_scans.CALIBRATION_SCANS`: rendered like the training
     images from generators no run and no validation split draws from) are degraded by
     every factor of `real_scans.DEGRADATIONS` with block, Gaussian and k-space PSFs;
  2. the model runs blind on each (`jaxsr upsample --psf auto`), and each decided group's
     ratio (k-space residual / best spatial residual) is kept with whether the case's PSF
     was k-space truncation;
  3. `acquisition.calibrate` puts each role's threshold (in-plane, through-plane,
     isotropic) where it separates the two kinds best.

Records go to `<workdir>/psf_calibration.json` (every ratio, the thresholds, the cases
each threshold gets wrong) and `.md`; `config.write_to` (an exported model folder) also
writes the thresholds into that folder's manifest ("psf_thresholds", "psf_calibration"),
where `Upsampler` reads them. Whether the fitted thresholds help is for the validation
scans to say (`configs/real_scans.py:validation`, docs/results_real.md).
"""

from __future__ import annotations

import json
import os
import pathlib

from tqdm import tqdm

from jaxsr import files
from jaxsr.dmri.app import pretrained, upsample
from jaxsr.dmri.app.model import Upsampler, load_upsampler
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.studies import real_scans
from jaxsr.train.run_record import write_run_record


def case_ratios(upsampler: Upsampler, case: real_scans.Case, max_memory: int) -> dict:
  """{decided group role: k-space ratio} of the model's blind output on one case."""
  record = {}
  upsample.upsample(case.lr(), case.lr_affine(), upsampler, shape=case.hr_shape,
                    psf=acquisition.AUTO, max_memory=max_memory, record=record)
  return {role: acquisition.kspace_ratio(scores)
          for role, scores in record["psf"]["residuals"].items()}


def samples(rows: list[dict]) -> list[tuple[str, float, bool]]:
  """(role, ratio, k-space case) of every decided group whose axes the case degraded: the
  in-plane group of a through-plane case is decided on axes that were not, so it says
  nothing about either kind."""
  out = []
  for row in rows:
    factors = real_scans.DEGRADATIONS[row["degradation"]]
    for role, ratio in row["ratios"].items():
      degraded = {"in-plane": factors[0] > 1, "through-plane": factors[2] > 1,
                  "isotropic": True}[role]
      if degraded:
        out.append((role, ratio, row["psf"] == "kspace"))
  return out


def misclassified(points: list[tuple[str, float, bool]], thresholds: dict) -> dict:
  """{role: [cases, wrong]} under `thresholds`."""
  out = {}
  for role, ratio, kspace in points:
    counts = out.setdefault(role, [0, 0])
    counts[0] += 1
    counts[1] += int((ratio <= thresholds[role]) != kspace)
  return out


def report(rows: list[dict], thresholds: dict, model: str) -> str:
  points = samples(rows)
  fitted = misclassified(points, thresholds)
  default = misclassified(points, acquisition.DEFAULT_THRESHOLDS)
  lines = [f"`--psf auto` thresholds of {model} ({len(rows)} calibration cases)", "",
           "| role | k-space ratios | spatial ratios | threshold | wrong (fitted) "
           "| wrong (defaults) |", "|---|---|---|---|---|---|"]
  for role in acquisition.ROLES:
    ks = sorted(r for rl, r, k in points if rl == role and k)
    sp = sorted(r for rl, r, k in points if rl == role and not k)
    if not ks and not sp:
      continue
    span = lambda v: f"{v[0]:.3f} – {v[-1]:.3f}" if v else "—"
    lines.append(f"| {role} | {span(ks)} | {span(sp)} | {thresholds[role]:.3f} | "
                 f"{fitted[role][1]} / {fitted[role][0]} | "
                 f"{default[role][1]} / {default[role][0]} (at "
                 f"{acquisition.DEFAULT_THRESHOLDS[role]:g}) |")
  return "\n".join(lines) + "\n"


def write_to_manifest(folder: str | os.PathLike, thresholds: dict, rows: list[dict]) -> None:
  """Adds the thresholds and a summary of their calibration to an exported folder's manifest."""
  folder = pathlib.Path(folder)
  if not pretrained.is_exported(folder):
    raise ValueError(f"write_to={folder}: not an exported model folder (no manifest.json)")
  manifest = json.loads((folder / "manifest.json").read_text())
  manifest["psf_thresholds"] = thresholds
  manifest["psf_calibration"] = {
      "study": "jaxsr.dmri.studies.psf_calibration", "cases": len(rows),
      "scans": sorted({r["scan"] for r in rows}),
      "wrong": misclassified(samples(rows), thresholds)}
  files.write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def evaluate(config, workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """Fits the thresholds of `config.checkpoint` (step `config.checkpoint_step`; "" = the
  shipped model) on the calibration volumes; writes OUT/psf_calibration.{json,md} (OUT:
  `out`, default WORKDIR/eval) and, with `config.write_to`, that folder's manifest."""
  out_dir = pathlib.Path(out) if out else pathlib.Path(workdir) / "eval"
  files.check_can_create(out_dir)
  write_run_record(out_dir / "psf_calibration_run.json", config)
  upsampler = load_upsampler(config.checkpoint or None, config.get("checkpoint_step") or None)
  cases = real_scans.make_cases(tuple(config.scans), tuple(config.degradations),
                                tuple(config.psfs))
  rows = [{"scan": c.scan, "degradation": c.degradation, "psf": c.psf,
           "ratios": case_ratios(upsampler, c, config.max_memory)}
          for c in tqdm(cases, desc="calibration", dynamic_ncols=True)]
  thresholds = acquisition.calibrate(samples(rows))
  model = f"{upsampler.run_dir} (step {upsampler.step})"
  files.write_json(out_dir / "psf_calibration.json",
                   {"model": model, "thresholds": thresholds, "rows": rows})
  text = report(rows, thresholds, model)
  files.write_text(out_dir / "psf_calibration.md", text)
  if config.get("write_to"):
    write_to_manifest(config.write_to, thresholds, rows)
  return text
