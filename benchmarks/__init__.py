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


def set_threads(threads: int | None) -> int:
  """Runs this process on `threads` cores (all when None) for JAX and PyTorch alike; returns it.

  XLA:CPU sizes its thread pool by the cores the process may run on, so the affinity
  mask sets it (called before JAX starts its CPU backend); PyTorch gets the same count.
  """
  available = sorted(os.sched_getaffinity(0))
  threads = len(available) if threads is None else threads
  if not 1 <= threads <= len(available):
    raise SystemExit(f"--threads must be within 1..{len(available)}, got {threads}")
  os.sched_setaffinity(0, available[:threads])
  try:
    import torch
    torch.set_num_threads(threads)
  except ImportError:
    pass
  return threads


def step_columns(jax_step: tuple[Callable[[], object], float, int],
                 torch_step: Callable[[str | None], tuple[Callable[[], object], int]],
                 compile_mode: str, rtol: float = 1e-4) -> tuple[dict, dict, dict]:
  """(runs, parameter counts, compile seconds) by column for `race_steps`: JAX (jit), PyTorch
  eager and, unless `compile_mode` is "none", the model under `torch.compile(mode=compile_mode)`.

  `jax_step` is (run one step, compile seconds, parameter count); `torch_step(mode)` builds a
  fresh PyTorch step from the same seed, eager for None. torch.compile's compile time is its
  first call's, and its first loss must equal a fresh eager step's first loss within `rtol`
  (1e-4 in float32; bfloat16 needs a looser one: its fused kernels round differently).
  """
  run_jax, compile_s, jax_params = jax_step
  run_eager, eager_params = torch_step(None)
  runs = {"JAX (jit)": run_jax, "PyTorch eager": run_eager}
  params = {"JAX (jit)": jax_params, "PyTorch eager": eager_params}
  compiles = {"JAX (jit)": compile_s}
  if compile_mode == "none":
    return runs, params, compiles
  expected = float(torch_step(None)[0]())
  name = f"torch.compile ({compile_mode})"
  runs[name], params[name] = torch_step(compile_mode)
  start = time.perf_counter()
  first = float(runs[name]())
  compiles[name] = time.perf_counter() - start
  assert abs(first - expected) <= rtol * abs(expected), (
      f"torch.compile ({compile_mode}) changed the first loss: {first} vs eager {expected}")
  return runs, params, compiles


def race_steps(runs: dict[str, Callable[[], object]], *, params: dict[str, int],
               compile_s: dict[str, float], threads: int, rounds: int, steps: int,
               work: float, work_unit: str, flops: float | None = None,
               peak_flops: float | None = None) -> dict[str, float]:
  """Times equal train steps alternately and prints them; returns {name: steps/s}.

  `runs` maps a label to one step; the first is JAX, the others PyTorch (eager,
  torch.compile). Asserts equal parameter counts. `work` is what one step
  processes (HR voxels, maps), printed per second as `work_unit`. With `flops`
  (model FLOPs of one step) the achieved FLOP/s are printed too, and with
  `peak_flops` (a peak FLOP/s: the device's, or the measured matrix-multiply peak)
  the model FLOPs utilisation. The ratios of JAX to each other come last.
  """
  counts = set(params.values())
  assert len(counts) == 1, f"parameter counts differ: {params}"
  print(f"parameters: {counts.pop():,} in each of {', '.join(runs)}; {threads} thread(s) each")
  for name, seconds in compile_s.items():
    print(f"compile {name}: {seconds:.1f} s")
  times = time_alternating(runs, rounds, steps)
  rates = {}
  for name in runs:
    step_s = statistics.median(times[name])
    rates[name] = 1 / step_s
    print(f"{name:28s} {step_s:7.3f} s/step  {1 / step_s:6.3f} steps/s  "
          f"{work / step_s:12,.1f} {work_unit}/s  (rounds: "
          f"{', '.join(f'{t:.3f}' for t in times[name])} s/step)")
    if flops:
      utilisation = f", MFU {flops / step_s / peak_flops:.1%}" if peak_flops else ""
      print(f"{'':28s} model FLOP/s {flops / step_s / 1e12:.3f} T{utilisation}")
  first, *others = runs
  for other in others:
    print(f"{first} / {other} throughput: {rates[first] / rates[other]:.2f}")
  return rates


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """This machine's measured float32 matrix-multiply FLOP/s through XLA (best of `repeats`):
  the peak that model FLOPs utilisation on a CPU is reported against."""
  import jax.numpy as jnp
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


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
