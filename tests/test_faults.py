"""Faults lose nothing and never pass silently (docs/reliability.md lists each with its outcome).

Each test reproduces one fault as a user or a cluster would cause it: a run that diverges,
a second process on a locked workdir, a truncated checkpoint file, a resume with another
architecture, SIGTERM during training, a full disk (a file-size limit on the process),
bad configs and `jaxsr upsample` edge cases.
"""

import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import nibabel as nib
import numpy as np
import pytest

from configs import arssr
from jaxsr import entry, errors, registry
from jaxsr.registry import load_run
from jaxsr.train import divergence
from jaxsr.train.checkpoint import CheckpointError
from jaxsr.train.workdir_lock import WorkdirLock
from tests.cli_helpers import run_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def smoke_config(cache, **overrides):
  config = arssr.get_config("smoke")
  config.data.cache_dir = str(cache)
  config.update_from_flattened_dict(overrides)
  return config


def steps_in(workdir):
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]  # strict: no NaN


def report(command, capsys):
  """(exit code, stderr) of `command` run as train.py / evaluate.py run it."""
  code = entry.report_errors(command)
  return code, capsys.readouterr().err


def quiet_env():
  """The test environment without the shared compilation cache (it writes files of its own)."""
  return {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")} | {
      "JAX_PLATFORMS": "cpu"}


def limit_file_size(limit_bytes):
  """preexec_fn: no file of the process may grow past `limit_bytes` (a quota; EFBIG, not SIGXFSZ)."""
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
  return apply


def test_divergence_stops_at_the_step_and_saves_nothing_non_finite(tmp_path, smoke_cache,
                                                                   capsys):
  workdir = tmp_path / "run"
  config = smoke_config(smoke_cache, **{"train.learning_rate": 1e6})
  code, err = report(lambda: registry.train(config, workdir), capsys)
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and "training diverged at step" in last
  step = int(last.split("diverged at step ")[1].split()[0])
  assert step <= config.train.num_steps and all(s < step for s in steps_in(workdir))
  run = load_run(workdir)  # what was saved restores and is finite
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(run.variables))
  for record in read_jsonl(workdir / "metrics.jsonl"):
    assert np.isfinite(record["loss"])


def test_a_step_with_non_finite_values_is_not_taken():
  """keep_finite returns the old state, flagged, when the new state or a metric is not finite."""
  step = lambda state, batch, rng: (jax.tree.map(lambda x: x * batch, state), {"loss": batch})
  guarded = jax.jit(divergence.keep_finite(step))
  state = {"w": np.ones(3, np.float32), "count": np.int32(4)}
  new, metrics = guarded(state, np.float32(2.0), None)
  assert bool(metrics["finite"]) and np.all(new["w"] == 2) and new["count"] == 8
  new, metrics = guarded(state, np.float32(np.inf), None)
  assert not bool(metrics["finite"]) and np.all(new["w"] == 1) and new["count"] == 4
  assert divergence.first_non_finite([{"finite": True}, {"finite": False, "loss": 1.0}], 7) == (
      8, {"loss": 1.0})


def poison(step_dir):
  """Rewrites a checkpoint's state with NaN in every float array (as a run saved without the
  divergence guard, e.g. by an older jaxsr, would hold after blowing up)."""
  import orbax.checkpoint as ocp
  state_dir = step_dir / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.restore(state_dir)
  nan = lambda x: np.full_like(x, np.nan) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
  shutil.rmtree(state_dir)
  checkpointer.save(state_dir, jax.tree.map(nan, tree))


def test_checkpoints_with_non_finite_parameters_are_refused(tmp_path, arssr_smoke_run,
                                                            smoke_cache, capsys):
  """Reading falls back to the newest finite checkpoint; with none, one line and exit 2."""
  workdir = tmp_path / "nan_run"
  shutil.copytree(arssr_smoke_run, workdir)
  for step in (10, 20):
    poison(workdir / "checkpoints" / str(step))
  warnings = []
  assert load_run(workdir, warn=warnings.append).step == 1
  assert len(warnings) == 2 and all("non-finite parameters" in w for w in warnings)
  shutil.rmtree(workdir / "checkpoints" / "1")
  lr = tmp_path / "in.nii.gz"
  nib.save(nib.Nifti1Image(np.random.default_rng(0).random((10, 10, 8), np.float32), np.eye(4)),
           lr)
  code, err = run_cli("upsample", "--checkpoint", workdir, "--dwi", lr, "--scale", 2,
                      "--out", tmp_path / "out.nii.gz")
  assert code == 2 and "non-finite parameters" in err and err.count("\n") == 1
  assert not (tmp_path / "out.nii.gz").exists()
  from jaxsr.dmri import evaluation
  code, err = report(lambda: evaluation.evaluate(smoke_config(smoke_cache), workdir), capsys)
  assert code == 2 and "non-finite parameters" in err.strip().splitlines()[-1]
  assert not (workdir / "eval" / "table.json").exists()


def test_a_second_trainer_on_a_locked_workdir_stops_at_once_naming_the_holder(tmp_path,
                                                                              smoke_cache):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\n"
       "from jaxsr.train.workdir_lock import WorkdirLock\n"
       "with WorkdirLock(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(300)\n",
       str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    config = smoke_config(smoke_cache, **{"train.num_steps": 2})
    with pytest.raises(errors.WorkdirBusy, match=f"pid {holder.pid} on"):
      registry.train(config, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # nothing written
  finally:
    holder.kill()
    holder.wait()
  with WorkdirLock(workdir):  # the kernel released the killed holder's lock
    pass


def test_a_truncated_checkpoint_is_skipped_by_readers_and_set_aside_by_training(
    tmp_path, arssr_smoke_run, smoke_cache, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(arssr_smoke_run, workdir)
  assert steps_in(workdir) == [1, 10, 20]
  for data_file in (workdir / "checkpoints" / "20" / "state").rglob("d/*"):
    data_file.write_bytes(data_file.read_bytes()[:50])
  warnings = []
  assert load_run(workdir, warn=warnings.append).step == 10
  assert len(warnings) == 1 and "checkpoint 20 cannot be read" in warnings[0]

  # Training resumes from 10, keeps the unreadable checkpoint aside, and trains 10 -> 20 again.
  assert registry.train(smoke_config(smoke_cache), workdir) == 20
  assert f"{workdir / 'checkpoints' / '20'}: skipped" in capsys.readouterr().err
  assert steps_in(workdir)[-1] == 20 and load_run(workdir).step == 20
  aside = list((workdir / "checkpoints_unreadable").iterdir())
  assert len(aside) == 1 and aside[0].name.startswith("20-")
  assert [m["step"] for m in read_jsonl(workdir / "metrics.jsonl")] == [5, 10, 15, 20]
  assert json.loads((workdir / "run.json").read_text())["resumed_from_step"] == 10

  # No checkpoint restores: one line naming the run, for readers and training alike.
  for manifest in (workdir / "checkpoints").rglob("manifest.ocdbt"):
    manifest.unlink()
  with pytest.raises(CheckpointError, match="none of its .* checkpoints restores"):
    load_run(workdir)


def test_resuming_with_another_architecture_is_refused_before_anything_is_written(
    tmp_path, arssr_smoke_run, smoke_cache):
  workdir = tmp_path / "run"
  shutil.copytree(arssr_smoke_run, workdir)
  record = (workdir / "run.json").read_bytes()
  metrics = (workdir / "metrics.jsonl").read_bytes()
  changed = smoke_config(smoke_cache, **{"model.num_features": 12, "seed": 1})
  with pytest.raises(errors.ConfigError) as refused:
    registry.train(changed, workdir)
  message = str(refused.value)
  assert "model.num_features: 8 -> 12" in message and "seed: 0 -> 1" in message
  assert "\n" not in message
  longer = smoke_config(smoke_cache, **{"train.num_steps": 22})
  with pytest.raises(errors.ConfigError, match="--allow_schedule_change"):
    registry.train(longer, workdir)
  assert (workdir / "run.json").read_bytes() == record
  assert (workdir / "metrics.jsonl").read_bytes() == metrics and steps_in(workdir)[-1] == 20
  # The schedule may change when asked for: two more steps.
  assert registry.train(longer, workdir, allow_schedule_change=True) == 22
  assert steps_in(workdir)[-1] == 22
  assert registry.train(longer, workdir) == 22  # finished: skipped, nothing rewritten
  assert (workdir / "metrics.jsonl").read_text().count("\n") == 5


def test_sigterm_saves_the_current_step_and_the_run_resumes_from_it(tmp_path, smoke_cache):
  workdir = tmp_path / "run"
  overrides = ["--config.train.num_steps=100000", "--config.train.checkpoint_every_steps=100000",
               "--config.train.log_every_steps=1"]
  process = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/arssr.py:smoke", f"--workdir={workdir}",
       f"--config.data.cache_dir={smoke_cache}", *overrides],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and (
      not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
  last = err.strip().splitlines()[-1]
  stopped = int(last.split("after step ")[1].split(";")[0])
  assert last.startswith("error: ") and "stopped by SIGTERM" in last and "Traceback" not in err
  assert steps_in(workdir)[-1] == stopped, (sorted(p.name for p in (workdir / "checkpoints").iterdir()), err[-3000:])
  assert read_jsonl(metrics)[-1]["step"] == stopped

  config = smoke_config(smoke_cache, **{"train.num_steps": stopped + 3,
                                        "train.checkpoint_every_steps": 100000,
                                        "train.log_every_steps": 1})
  registry.train(config, workdir, allow_schedule_change=True)
  assert json.loads((workdir / "run.json").read_text())["resumed_from_step"] == stopped
  assert [m["step"] for m in read_jsonl(metrics)] == list(range(1, stopped + 4))


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, arssr_smoke_run,
                                                            smoke_cache):
  """Files may grow to 50 kB: the first checkpoint's array file (~100 kB) cannot be written
  (the asynchronous save's failure surfaces at the next save, step 2)."""
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "train.py", "--config=configs/arssr.py:smoke", f"--workdir={workdir}",
       f"--config.data.cache_dir={smoke_cache}", "--config.train.checkpoint_every_steps=2"],
      cwd=ROOT, env=quiet_env(), preexec_fn=limit_file_size(50_000), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {workdir / 'checkpoints'}: could not write checkpoint 1")
  assert "Traceback" not in result.stderr
  assert list((workdir / "checkpoints").iterdir()) == []  # no partial checkpoint left

  # evaluate.py finds an output folder that takes no file before it scores anything.
  out = tmp_path / "results"
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/arssr.py:smoke",
       f"--workdir={arssr_smoke_run}", f"--config.data.cache_dir={smoke_cache}", f"--out={out}"],
      cwd=ROOT, env=quiet_env(), preexec_fn=limit_file_size(1_000), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 1
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: {out}: cannot be created or written") and "File too large" in line
  assert not out.exists()


def test_evaluate_writes_elsewhere_on_request(tmp_path, arssr_smoke_run, smoke_cache):
  from jaxsr.dmri import evaluation
  out = tmp_path / "results"
  evaluation.evaluate(smoke_config(smoke_cache), arssr_smoke_run, out=out)
  assert {p.name for p in out.iterdir()} == {"run.json", "per_subject.json", "table.json",
                                             "table.md"}
  json.loads((out / "table.json").read_text())


@pytest.mark.parametrize("arguments, message", [
    (["--config=configs/arssr.py:smoke", "--config.nonexistent=1"], "nonexistent"),
    (["--config=configs/missing.py"], "configs/missing.py"),
    (["--config=configs/arssr.py:smoke", "--config.model.kind=foo"], "model.kind='foo'"),
    (["--config=configs/arssr.py:smoke", "--config.train.num_steps=-5"], "train.num_steps=-5"),
    (["--config=configs/arssr.py:smoke", "--config.batch_size=3"],
     "must be a multiple of the device count 2"),
])
def test_config_errors_are_one_line_exit_2_and_create_nothing(tmp_path, arguments, message):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "train.py", f"--workdir={workdir}", *arguments],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not workdir.exists()


def test_upsample_refuses_signed_inputs_and_overwriting_an_input(tmp_path, arssr_smoke_run):
  rng = np.random.default_rng(0)
  negative = tmp_path / "negative.nii.gz"
  nib.save(nib.Nifti1Image(-rng.random((10, 10, 8), np.float32), np.eye(4)), negative)
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", negative,
                      "--scale", 2, "--out", tmp_path / "out.nii.gz")
  assert code == 2 and "no voxel is positive" in err and err.count("\n") == 1
  scan = tmp_path / "scan.nii.gz"
  nib.save(nib.Nifti1Image(rng.random((10, 10, 8), np.float32), np.eye(4)), scan)
  before = scan.read_bytes()
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", scan, "--scale", 2,
                      "--out", scan, "--overwrite")
  assert code == 2 and "is one of the inputs" in err and scan.read_bytes() == before
  assert not list(tmp_path.glob("out*"))


def test_upsample_removes_temporaries_a_killed_run_left_and_checks_the_folder_first(
    tmp_path, arssr_smoke_run):
  scan = tmp_path / "scan.nii.gz"
  nib.save(nib.Nifti1Image(np.random.default_rng(1).random((10, 10, 8), np.float32), np.eye(4)),
           scan)
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()  # a process id that no longer runs
  stale = tmp_path / f".tmp-{gone.pid}-0123abcd-out.nii.gz"
  stale.write_bytes(b"partial")
  mine = tmp_path / f".tmp-{os.getpid()}-0123abcd-out.nii.gz"  # a live writer's: kept
  mine.write_bytes(b"in progress")
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", scan, "--scale", 2,
                      "--out", tmp_path / "out.nii.gz")
  assert code == 0, err
  assert not stale.exists() and mine.exists() and (tmp_path / "out.nii.gz").exists()

  # An output folder that takes no file is found before the computation, named, exit 2.
  (tmp_path / "full").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "jaxsr.cli", "upsample", "--checkpoint", str(arssr_smoke_run),
       "--dwi", str(scan), "--scale", "2", "--out", str(tmp_path / "full" / "out.nii.gz")],
      cwd=ROOT, env=quiet_env(), preexec_fn=limit_file_size(1_000), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 2
  line = result.stderr.strip()
  assert "\n" not in line and f"{tmp_path / 'full' / 'out.nii.gz'}: cannot be written" in line
  assert list((tmp_path / "full").iterdir()) == []
