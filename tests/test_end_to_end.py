"""train.py and evaluate.py on the smoke config, as a user runs them: train, kill, resume, evaluate."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/csr_dmri.py:smoke"
pytestmark = pytest.mark.slow


def run(script, workdir, cache, *overrides, wait=True):
  command = [sys.executable, script, f"--config={CONFIG}", f"--workdir={workdir}",
             f"--config.data.cache_dir={cache}", *overrides]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def read_metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir):
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def test_smoke_train_and_evaluate_write_the_table_and_score_the_validation_split(tmp_path,
                                                                                   cache):
  workdir = tmp_path / "run"
  run("train.py", workdir, cache, "--config.train.validate=True")
  record = json.loads((workdir / "run.json").read_text())
  assert record["seed"] == 0 and record["config"]["variant"] == "smoke"
  assert record["versions"]["jax"] and record["git_commit"]
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [5, 10, 15, 20]
  assert all(np.isfinite(m["loss"]) and m["voxels_per_s"] > 0 for m in metrics)
  assert checkpoint_steps(workdir)[-1] == 20

  result = run("evaluate.py", workdir, cache)
  table = json.loads((workdir / "eval" / "table.json").read_text())
  assert {(r["method"], r["scale"]) for r in table} == {
      (m, s) for m in ("tricubic", "zero_fill", "csr_dmri") for s in (2.0, 3.0, 4.0, 2.4)}
  for row in table:
    assert set(row) >= {"method", "scale", "psnr", "ssim"}
    assert np.isfinite(row["psnr"]) and 0 < row["psnr"] < 100
    assert -1 <= row["ssim"] <= 1
  markdown = (workdir / "eval" / "table.md").read_text()
  assert markdown in result.stdout and "| csr_dmri |" in markdown and "2.4× PSNR" in markdown

  # Validation: scored at every checkpoint of the interval; evaluation of the validation
  # subject at the best of them.
  scores = [json.loads(l) for l in (workdir / "validation.jsonl").read_text().splitlines()]
  assert [s["step"] for s in scores] == [10, 20] and all(s["val_psnr"] > 0 for s in scores)
  best = max(scores, key=lambda s: (s["val_psnr"], -s["step"]))["step"]
  run("evaluate.py", workdir, cache, "--config.eval.split=val", "--config.eval.checkpoint=best")
  record = json.loads((workdir / "eval" / "val" / "run.json").read_text())
  assert record["split"] == "val" and record["subjects"] == ["sub-01"]
  assert record["checkpoint_step"] == best
  rows = json.loads((workdir / "eval" / "val" / "per_subject.json").read_text())
  assert {r["subject"] for r in rows} == {"sub-01"}
  bad = subprocess.run([sys.executable, "evaluate.py", f"--config={CONFIG}",
                        f"--workdir={workdir}", f"--config.data.cache_dir={cache}",
                        "--config.eval.split=train"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: eval.split")


def test_killed_training_resumes_with_the_same_steps_and_data(tmp_path, cache):
  overrides = ("--config.train.num_steps=60", "--config.train.checkpoint_every_steps=10",
               "--config.train.log_every_steps=1")
  reference = tmp_path / "reference"
  run("train.py", reference, cache, *overrides)
  expected = {m["step"]: m["loss"] for m in read_metrics(reference)}

  workdir = tmp_path / "killed"
  process = run("train.py", workdir, cache, *overrides, wait=False)
  deadline = time.time() + 300
  while not checkpoint_steps(workdir) and time.time() < deadline and process.poll() is None:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
  killed_at = checkpoint_steps(workdir)
  assert killed_at and killed_at[-1] < 60

  run("train.py", workdir, cache, *overrides)
  record = json.loads((workdir / "run.json").read_text())
  assert record["resumed_from_step"] == killed_at[-1]
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == list(range(1, 61))
  assert np.all(np.diff([m["elapsed_s"] for m in metrics]) > 0)  # training time adds up
  resumed = {m["step"]: m["loss"] for m in metrics if m["step"] > killed_at[-1]}
  np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed],
                             rtol=1e-5)


def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path):
  import nibabel as nib
  subject = tmp_path / "hcp" / "sub-01"
  subject.mkdir(parents=True)
  nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), subject / "data.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), np.eye(4)),
           subject / "nodif_brain_mask.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), subject / "T1w.nii.gz")
  (subject / "bvals").write_text("0 1000\n")
  (subject / "bvecs").write_text("0 1\n0 0\n0 0\n")
  workdir = tmp_path / "run"
  command = [sys.executable, "train.py", f"--config={CONFIG}", f"--workdir={workdir}",
             "--config.data.source=hcp", f"--config.data.root={tmp_path / 'hcp'}",
             "--config.data.num_val=0", "--config.data.num_test=0",
             f"--config.data.cache_dir={tmp_path / 'cache'}"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(subject / "data.nii.gz") in last and "4D" in last
  assert not workdir.exists()
  assert not any((tmp_path / "cache").rglob("*.npy"))

