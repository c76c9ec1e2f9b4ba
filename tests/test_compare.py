"""configs/compare_dmri.py: which runs `train_runs` trains; the smoke comparison through the
command line: train every method, then the tables and their score records."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import matplotlib.image
import pytest

from configs import compare_dmri
from jaxsr.dmri.task import runs
from jaxsr.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/compare_dmri.py:smoke"
RUNS = ("dcsrn", "rescnn3d", "arssr", "inr_t1", "inr_fft", "csr_dmri")  # smoke: no size-matched
METHODS = {"tricubic", "zero_fill", *RUNS}


def test_train_runs_chooses_which_runs_are_trained_for_each_seed():
  config = compare_dmri.get_config("quick")
  assert [(n, s) for n, s, _ in runs(config)] == [(n, s) for s in (0, 1, 2) for n in config.runs]
  config.train_runs, config.seeds = ("rescnn3d_matched", "arssr"), (2,)
  chosen = runs(config)
  assert [(n, s) for n, s, _ in chosen] == [("arssr", 2), ("rescnn3d_matched", 2)]
  assert chosen[1][2].seed == 2 and chosen[1][2].model.num_features == 32
  config.train_runs = ("arssr", "nonsense")
  with pytest.raises(ConfigError, match="nonsense"):
    runs(config)


def run(script, workdir, cache, *overrides):
  command = [sys.executable, script, f"--config={CONFIG}", f"--workdir={workdir}",
             f"--config.data.cache_dir={cache}", *overrides]
  result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.mark.slow
def test_compare_smoke_trains_every_method_writes_tables_dti_figures_and_reuses_scores(tmp_path):
  workdir, cache = tmp_path / "compare", tmp_path / "cache"
  run("train.py", workdir, cache)
  best = {}
  for name in RUNS:
    seed_dir = workdir / name / "seed0"
    record = json.loads((seed_dir / "run.json").read_text())
    assert record["config"]["data"]["cache_dir"] == str(cache)  # one override reaches every run
    assert record["config"]["seed"] == 0 and record["config"]["train"]["validate"]
    assert (seed_dir / "checkpoints" / "20").is_dir()
    scores = [json.loads(l) for l in (seed_dir / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in scores] == [10, 20]  # every checkpoint of the interval
    best[name] = max(scores, key=lambda r: (r["val_psnr"], -r["step"]))["step"]
  assert record["config"]["model"]["in_channels"] == 2 and record["config"]["train"]["fft_weight"]

  result = run("evaluate.py", workdir, cache)
  eval_dir = workdir / "eval"
  tables = json.loads((eval_dir / "tables.json").read_text())
  assert {(r["method"], r["scale"]) for r in tables["table"]} == {
      (m, s) for m in METHODS for s in (2.0, 3.0, 4.0, 2.4)}
  assert {r["method"] for r in tables["dti"]} == METHODS
  assert all(r["fa_rmse"] > 0 and r["md_rmse"] > 0 for r in tables["dti"])
  assert {r["method"] for r in tables["wilcoxon"]} == METHODS - {"csr_dmri"}
  # Each run is evaluated at its best validation checkpoint, not its latest.
  assert tables["checkpoint_steps"] == {m: {"0": best[m]} for m in RUNS}
  assert tables["split"] == "test" and tables["subjects"] == ["sub-02"]
  # Per-volume scores: 1 test subject x 2 scored volumes per (method, scale).
  assert len(tables["per_volume"]) == len(METHODS) * 4 * 2

  table1 = (eval_dir / "table1.md").read_text()
  table2 = (eval_dir / "table2.md").read_text()
  assert "| method | 2× PSNR | 2× SSIM" in table1 and "| dcsrn |" in table1
  assert "| inr_t1 |" not in table1 and "Wilcoxon" in table1
  assert "| method | T1 | FFT loss |" in table2
  assert "| csr_dmri | ✓ | ✓ |" in table2 and "| arssr |  |  |" in table2
  assert "| inr_fft |  | ✓ |" in table2
  assert "FA RMSE" in (eval_dir / "dti.md").read_text()
  runs_md = (eval_dir / "runs.md").read_text()  # each run: steps, its scored (best) checkpoint
  for name in RUNS:
    assert f"| {name} | 0 | 20 | {best[name]} | " in runs_md
  assert "Table 1" in result.stdout and "Table 2" in result.stdout
  for name in ("slices_2.4x.png", "errors_2.4x.png", "fa_2.4x.png"):
    image = matplotlib.image.imread(eval_dir / "figures" / name)
    assert image.shape[0] > 200 and image.shape[1] > image.shape[0]

  # One score record per method and seed; a later evaluation reads them instead of the runs,
  # also where a run is gone (scored on another machine), and gives the same tables.
  records = {p.name for p in (eval_dir / "scores").iterdir()}
  assert records == {"tricubic.json", "zero_fill.json"} | {f"{m}.seed0.json" for m in RUNS}
  record = json.loads((eval_dir / "scores" / "arssr.seed0.json").read_text())
  assert record["checkpoint_step"] == best["arssr"]
  assert record["training_run"]["config"]["model"]["in_channels"] == 1
  assert record["training_run"]["final_metrics"]["step"] == 20
  assert len(record["rows"]) == 4 * 2 and len(record["dti_rows"]) == 1
  shutil.rmtree(eval_dir / "figures")
  result = run("evaluate.py", workdir, cache)  # every score from its record, figures anew
  assert "evaluate: 0 volume reconstructions" in result.stdout + result.stderr
  assert json.loads((eval_dir / "tables.json").read_text())["table"] == tables["table"]
  assert (eval_dir / "figures" / "fa_2.4x.png").exists()
  shutil.rmtree(workdir / "arssr")
  result = run("evaluate.py", workdir, cache, "--config.eval.figures=False")
  assert "arssr/seed0: scores from" in result.stderr + result.stdout
  again = json.loads((eval_dir / "tables.json").read_text())
  assert again["table"] == tables["table"] and again["dti"] == tables["dti"]
  assert again["wilcoxon"] == tables["wilcoxon"]
