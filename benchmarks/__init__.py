"""Benchmarks, run as `python -m benchmarks.<name>`; results in docs/benchmarks.md and docs/inference.md."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import statistics
import time
from typing import Callable

import jax

from jaxsr.train.run_record import git_commit, package_versions


def cpu_name() -> str:
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    return next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def machine_report() -> str:
  """One line: CPU, cores, JAX devices, versions (torch when installed) and the git commit."""
  versions = package_versions()
  try:
    versions["torch"] = importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    pass
  listed = ", ".join(f"{k} {versions[k]}" for k in ("python", "jax", "jaxlib", "flax", "torch")
                     if k in versions)
  return (f"machine: {cpu_name()}, {os.cpu_count()} cores; JAX devices {jax.devices()}; "
          f"{listed}; commit {git_commit()}")


def time_alternating(runs: dict[str, Callable[[], object]], rounds: int,
                     steps: int) -> dict[str, list[float]]:
  """Seconds per call of each of `runs`, one list entry per round.

  One warm-up call each, then `rounds` rounds; in each, every run is called
  `steps` times in turn, so that load changes on a shared machine touch all of
  them alike (compare their medians as ratios).
  """
  for run in runs.values():
    run()
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      for _ in range(steps):
        run()
      times[name].append((time.perf_counter() - start) / steps)
  return times


def race_steps(run_jax: Callable[[], object], run_torch: Callable[[], object], *,
               jax_params: int, torch_params: int, compile_s: float, rounds: int, steps: int,
               work: float, work_unit: str, flops: float | None = None,
               peak_flops: float | None = None) -> float:
  """Times two equal train steps alternately and prints them; returns JAX/PyTorch throughput.

  Asserts equal parameter counts. `work` is what one step processes (HR voxels,
  maps), printed per second as `work_unit`. With `flops` (model FLOPs of one
  step) the achieved FLOP/s are printed too, and with `peak_flops` (the
  device's peak FLOP/s) the model FLOPs utilisation.
  """
  assert jax_params == torch_params, f"parameter counts differ: {jax_params} vs {torch_params}"
  print(f"parameters: {jax_params:,} (JAX) = {torch_params:,} (PyTorch)")
  print(f"JAX compile: {compile_s:.1f} s")
  times = time_alternating({"jax": run_jax, "torch": run_torch}, rounds, steps)
  rates = {}
  for name, label in (("jax", "JAX (jit)"), ("torch", "PyTorch eager")):
    step_s = statistics.median(times[name])
    rates[name] = 1 / step_s
    print(f"{label:14s} {step_s:7.3f} s/step  {1 / step_s:6.3f} steps/s  "
          f"{work / step_s:12,.1f} {work_unit}/s  (rounds: "
          f"{', '.join(f'{t:.3f}' for t in times[name])} s/step)")
    if flops:
      utilisation = f", MFU {flops / step_s / peak_flops:.1%}" if peak_flops else ""
      print(f"{'':14s} model FLOP/s {flops / step_s / 1e12:.3f} T{utilisation}")
  return rates["jax"] / rates["torch"]


def compiled_step(train_step, state, batch, rng) -> tuple[Callable[[], None], float]:
  """(run one step in place, compile seconds) for a jitted `train_step(state, batch, rng)`.

  Compiles once ahead of time (`lower().compile()`, timed); each call of `run`
  advances the held state and waits for the step's loss.
  """
  start = time.perf_counter()
  compiled = train_step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready(metrics["loss"])

  return run, compile_s
