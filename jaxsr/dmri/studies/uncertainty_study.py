"""Does the uncertainty map mean something? Its rank correlation with the error on real scans.

For every case of `jaxsr.dmri.studies.real_scans` (a dipy scan degraded by a factor and a PSF), the
shipped model super-resolves the LR volume as `jaxsr upsample` does (`--psf auto`) with each
uncertainty method of `jaxsr.dmri.app.uncertainty`, and inside the scan's brain mask:
  * Spearman's rank correlation of the map with the absolute error against the HR scan;
  * the calibration: mean absolute error by decile of the map (both divided by the scan's
    intensity range, so cases pool).
The validation scans choose the method and fit its calibration (the factor that makes the
map the expected absolute error); the test scans are scored once with that choice. Records
go to `<workdir>/uncertainty_<split>.json`; the report and the calibration figure (both
splits, once both are scored) to `<workdir>`.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
from tqdm import tqdm

from jaxsr import files
from jaxsr.dmri.studies import real_scans
from jaxsr.dmri.app import upsample
from jaxsr.dmri.app.model import Upsampler, load_upsampler
from jaxsr.dmri.app.settings import DEFAULT_MAX_MEMORY
from jaxsr.dmri.app import uncertainty as uncertainty_lib
from jaxsr.train.run_record import write_run_record


def case_scores(upsampler: Upsampler, case: real_scans.Case,
                max_memory: int = DEFAULT_MAX_MEMORY) -> dict:
  """{method: {"spearman", "deciles", "mean_error", "mean_spread", "seconds"}} of one case
  (errors and candidates over the scan's intensity range, candidates before calibration),
  "seconds_without" (the upsample alone) and "oracle": the rank correlation of the absolute
  error with its own local mean (smoothed as the candidates are), a bound no map computed
  without the truth should expect to pass (the truth's own noise is unpredictable)."""
  hr = np.asarray(real_scans.load_scan(case.scan), np.float64)
  mask = real_scans.brain_mask(case.scan)
  scale = float(hr[mask].max() - hr[mask].min())
  lr = case.lr()
  affine = case.lr_affine()
  start = time.perf_counter()
  plain = upsample.upsample(lr, affine, upsampler, shape=case.hr_shape,
                            max_memory=max_memory)[0]
  scores = {"seconds_without": time.perf_counter() - start}
  error = (plain - hr) / scale
  oracle = uncertainty_lib.smoothed(np.abs(error), lr.shape)
  scores["oracle"] = uncertainty_lib.rank_correlation(oracle, error, mask)
  for method in uncertainty_lib.METHODS:
    start = time.perf_counter()
    out, _, unc = upsample.upsample(lr, affine, upsampler, shape=case.hr_shape,
                                    uncertainty=method, max_memory=max_memory)
    candidate = unc / uncertainty_lib.CALIBRATION[method] / scale
    scores[method] = {
        "spearman": uncertainty_lib.rank_correlation(candidate, error, mask),
        "deciles": uncertainty_lib.deciles(candidate, error, mask),
        "mean_error": float(np.abs(error[mask]).mean()),
        "mean_spread": float(candidate[mask].mean()),
        "seconds": time.perf_counter() - start,
        "output_unchanged": bool(np.array_equal(out, plain))}
  return scores


def summarise(rows: list[dict]) -> dict:
  """Per method: mean Spearman over cases and over scans (the independent unit), the least
  case's, and the calibration factor sum(error) / sum(spread) over cases."""
  out = {}
  for method in uncertainty_lib.METHODS:
    by_case = [r["scores"][method]["spearman"] for r in rows]
    scans = sorted({r["scan"] for r in rows})
    by_scan = [float(np.mean([r["scores"][method]["spearman"] for r in rows if r["scan"] == s]))
               for s in scans]
    error = sum(r["scores"][method]["mean_error"] for r in rows)
    spread = sum(r["scores"][method]["mean_spread"] for r in rows)
    out[method] = {"spearman_mean": float(np.mean(by_case)), "spearman_min": float(min(by_case)),
                   "spearman_by_scan": dict(zip(scans, by_scan)),
                   "calibration": error / spread if spread > 0 else float("nan")}
  return out


def oracle_mean(rows: list[dict]) -> float:
  return float(np.mean([r["scores"]["oracle"] for r in rows]))


def pooled_deciles(rows: list[dict], method: str, calibration: float) -> list[tuple[float, float]]:
  """Mean (calibrated map, absolute error) per decile, averaged over cases."""
  per_case = np.array([r["scores"][method]["deciles"] for r in rows])  # (cases, 10, 2)
  mean = per_case.mean(axis=0)
  return [(float(u * calibration), float(e)) for u, e in mean]


def calibration_figure(splits: dict[str, list[dict]], method: str, calibration: float,
                       path: pathlib.Path) -> None:
  """Mean absolute error against mean uncertainty by decile, one line per split."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  summaries = {name: summarise(rows)[method] for name, rows in splits.items()}
  fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
  top = 0.0
  for (name, rows), marker in zip(splits.items(), "os"):
    points = np.array(pooled_deciles(rows, method, calibration))
    top = max(top, float(points.max()))
    ax.plot(points[:, 0], points[:, 1], marker=marker,
            label=f"{name}: Spearman {summaries[name]['spearman_mean']:.2f} "
                  f"({len(rows)} cases)")
  ax.plot([0, top], [0, top], color="0.6", linestyle="--", label="perfect calibration")
  ax.set_xlabel("uncertainty, mean per decile (fraction of the intensity range)")
  ax.set_ylabel("absolute error, mean per decile")
  ax.set_title(f"uncertainty ({method}) against error, real scans")
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.write_with(path, lambda temp: fig.savefig(temp, format="png"))
  plt.close(fig)


def report(splits: dict[str, list[dict]], chosen: str, calibration: float) -> str:
  lines = ["| split | method | Spearman, mean over cases | least case | mean per scan "
           "| calibration (error / candidate) |",
           "|---|---|---|---|---|---|"]
  for name, rows in splits.items():
    for method, s in summarise(rows).items():
      scans = ", ".join(f"{k} {v:.2f}" for k, v in s["spearman_by_scan"].items())
      lines.append(f"| {name} | {method}{' (chosen)' if method == chosen else ''} | "
                   f"{s['spearman_mean']:.3f} | {s['spearman_min']:.3f} | {scans} | "
                   f"{s['calibration']:.3f} |")
    lines.append(f"| {name} | oracle bound (the error's own local mean) | "
                 f"{oracle_mean(rows):.3f} | | | |")
  return ("\n".join(lines) + f"\n\nchosen on validation: {chosen} (the highest mean Spearman), "
          f"calibration {calibration:.3f}\n")


def evaluate(config, workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """Scores `config.split`'s cases into OUT/uncertainty_<split>.json (OUT: `out`, default
  WORKDIR/eval; a record already there, or `config.scores_from`, is read instead), then
  writes the report of every split scored in OUT (OUT/uncertainty.md) and the calibration
  figure (OUT/uncertainty_calibration.png); returns the report."""
  out_dir = pathlib.Path(out) if out else pathlib.Path(workdir) / "eval"
  files.check_can_create(out_dir)
  record = out_dir / f"uncertainty_{config.split}.json"
  if config.get("scores_from"):
    record = pathlib.Path(config.scores_from)
  elif not record.exists():
    write_run_record(out_dir / f"uncertainty_{config.split}_run.json", config)
    scans = tuple(config.scans) or (real_scans.VALIDATION_SCANS if config.split == "validation"
                                    else real_scans.TEST_SCANS)
    cases = real_scans.make_cases(scans, config.degradations, config.psfs)
    upsampler = load_upsampler(config.checkpoint or None)
    rows = [{"scan": c.scan, "degradation": c.degradation, "psf": c.psf,
             "scores": case_scores(upsampler, c, config.max_memory)}
            for c in tqdm(cases, desc="uncertainty", dynamic_ncols=True)]
    files.write_json(record, rows)
  splits = {}
  for name in ("validation", "test"):
    path = record if name == config.split else record.parent / f"uncertainty_{name}.json"
    if path.exists():
      splits[name] = json.loads(path.read_text())
  summary = summarise(splits.get("validation", splits[config.split]))
  chosen = max(summary, key=lambda m: summary[m]["spearman_mean"])
  calibration = summary[chosen]["calibration"]
  text = report(splits, chosen, calibration)
  if not config.get("scores_from"):
    calibration_figure(splits, chosen, calibration, out_dir / "uncertainty_calibration.png")
    files.write_text(out_dir / "uncertainty.md", text)
  return text
