"""Training on 2 processes with JAX's distributed runtime (localhost, CPU, 2 host devices each)
equals 1 process on 4 devices, through a checkpoint and a resume, with one process 40 s late
to the first step; a lost process stops the other within its timeout; an unreachable
coordinator is one line, exit code 2."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsr import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_command(workdir, cache, steps: int, *extra) -> list[str]:
  return [sys.executable, "train.py", "--config", "configs/csr_dmri.py:smoke",
          "--workdir", str(workdir), f"--config.data.cache_dir={cache}",
          "--config.batch_size=4", f"--config.train.num_steps={steps}",
          "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=2",
          "--config.data.num_scale_buckets=1",  # one compiled step per process
          *extra]


def environment(devices: int, **variables) -> dict:
  env = dict(os.environ, **{k: str(v) for k, v in variables.items()})
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + f" --xla_force_host_platform_device_count={devices}").strip()
  return env


def start_processes(workdir, cache, steps: int, *extra, timeout_s: int = 120):
  """The 2 processes of one distributed `train.py` run, started; each prints to
  `<workdir>.process<i>.log`."""
  port = free_port()
  command = train_command(workdir, cache, steps, "--config.distributed=True",
                          f"--config.distributed_timeout_s={timeout_s}", *extra)
  processes = []
  for i in range(2):
    with open(log_path(workdir, i), "w") as log:
      processes.append(subprocess.Popen(
          command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
          env=environment(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=2,
                          JAX_PROCESS_ID=i)))
  return processes


def log_path(workdir, process: int) -> pathlib.Path:
  return pathlib.Path(f"{workdir}.process{process}.log")


def finish(workdir, processes, timeout: float = 600) -> list[str]:
  """The processes' outputs, once each has ended with exit code 0."""
  for p in processes:
    p.wait(timeout=timeout)
  outputs = [log_path(workdir, i).read_text() for i in range(len(processes))]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, cause(out)
  return outputs


def cause(output: str) -> str:
  """What a failed process printed before Python's dump of its stacks and modules on abort."""
  return output.split("Fatal Python error")[0][-3000:] + "\n(stack dump left out)" * (
      "Fatal Python error" in output)


def hold_back(workdir, processes, seconds: float) -> None:
  """Stops process 1 for `seconds` once process 0 reports its devices (just before it
  compiles the first step): the processes then reach their first collective that far apart."""
  deadline = time.monotonic() + 600
  while "device(s) in 2 process(es)" not in log_path(workdir, 0).read_text():
    assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
    time.sleep(0.2)
  processes[1].send_signal(signal.SIGSTOP)
  time.sleep(seconds)
  processes[1].send_signal(signal.SIGCONT)


def losses(workdir) -> dict[int, float]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_two_processes_train_checkpoint_resume_and_equal_one_process(tmp_path, smoke_cache):
  distributed = tmp_path / "two_processes"
  processes = start_processes(distributed, smoke_cache, 2)
  # Longer than the 30 s CPU collectives wait for each other's first run.
  hold_back(distributed, processes, 40)
  outputs = finish(distributed, processes)
  assert "4 device(s) in 2 process(es)" in outputs[0]
  assert sorted(p.name for p in (distributed / "checkpoints").iterdir()) == ["1", "2"]
  outputs = finish(distributed, start_processes(distributed, smoke_cache, 4,
                                                "--allow_schedule_change"))
  assert "Resumed from step 2" in outputs[0]
  single = tmp_path / "one_process"
  subprocess.run(train_command(single, smoke_cache, 4), cwd=ROOT, check=True,
                 env=environment(4), capture_output=True, text=True)

  two, one = losses(distributed), losses(single)
  assert sorted(two) == sorted(one) == [1, 2, 3, 4]  # each step logged once, by process 0
  np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-5)
  a, b = (registry.load_run(run).variables["params"] for run in (distributed, single))
  leaves = [(x, y) for x, y in zip(*(jax_leaves(p) for p in (a, b)))]
  assert leaves and all(np.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in leaves)


def jax_leaves(tree) -> list[np.ndarray]:
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_a_lost_process_stops_the_other_within_its_timeout(tmp_path, smoke_cache):
  processes = start_processes(tmp_path / "run", smoke_cache, 10_000, timeout_s=20)
  survivor, lost = processes
  try:
    deadline = time.monotonic() + 600
    while not (tmp_path / "run" / "metrics.jsonl").exists():  # both are training
      assert survivor.poll() is None and time.monotonic() < deadline
      time.sleep(1)
    lost.kill()
    killed_at = time.monotonic()
    survivor.wait(timeout=120)
  finally:
    for p in processes:
      p.kill()
  assert survivor.returncode != 0
  assert time.monotonic() - killed_at < 120
  assert "another task died" in log_path(tmp_path / "run", 0).read_text()


def test_an_unreachable_coordinator_is_one_line_and_exit_2(tmp_path, smoke_cache):
  env = environment(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=2,
                    JAX_PROCESS_ID=1)  # process 0, the coordinator, never starts
  result = subprocess.run(
      train_command(tmp_path / "run", smoke_cache, 2, "--config.distributed=True",
                    "--config.distributed_timeout_s=5"),
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert re.search(r"did not start within 5 s", line)
  assert not (tmp_path / "run").exists()


def test_distributed_settings_in_the_environment_are_checked(monkeypatch):
  from jaxsr.train import distributed

  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  with pytest.raises(distributed.DistributedError, match="not in 0 … 1"):
    distributed._environment_settings()
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(distributed.DistributedError, match="set all of"):
    distributed._environment_settings()
