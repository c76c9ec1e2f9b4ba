"""Train-step throughput: jaxsr's jitted CSR-dMRI step against the same model in PyTorch, eager
and under torch.compile.

  python -m benchmarks.train_step [--variant default] [--conv-impl auto] [--scale 2.5] [--rounds 5]
                                  [--dtype float32] [--torch-device cpu] [--peak-tflops T]
                                  [--threads N] [--compile-mode default|none|max-autotune]

The default configuration (RDN 64/64/8×3 → 128, MLP 8×256, DWI + T1, batch 9, LR
10³ patches, every HR voxel of the (10·s)³ patch queried) at one scale s. Both
take the same random (B, M, M, M) HR and T1 crops; each makes the LR input,
runs forward, L1 + FFT loss, backward and an Adam update. After warm-up, rounds
alternate: `--steps` JAX steps, then as many PyTorch eager steps (`benchmarks.torch_reference`,
same shapes and parameter count, asserted), then as many with the model under
`torch.compile(mode=--compile-mode)` (inductor; its first loss checked equal to eager's:
rtol 1e-4, in bfloat16 2e-2).
JAX and PyTorch run on the same `--threads` cores (default: all; printed). Reported:
compile times (PyTorch's: its first call), steps/s and
HR voxels/s of each (median over rounds), and the compiled step shapes a whole
run with random scales needs (`data.num_scale_buckets`, counted in the jit cache
over a run of the smoke-sized model), and the model FLOP/s of each: 3 × the
forward pass's FLOPs (XLA's cost analysis of the model with native convolutions),
per second, and the model FLOPs utilisation against `--peak-tflops` (the device's
peak for the compute dtype) or, on a CPU without it, against this CPU's matrix-multiply
FLOP/s measured first (XLA, float32, 2048²). `--dtype bfloat16` computes in bfloat16 with float32
parameters and loss, in both (`model.dtype`; PyTorch under `torch.autocast`).
The last lines are the ratios of JAX's throughput to each PyTorch column.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import numpy as np

from benchmarks import (compiled_step, machine_report, matmul_peak_flops, race_steps, set_threads,
                        step_columns)
from configs import csr_dmri
from jaxsr.dmri.data import patches as pipeline
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.models import build_model, init_params
from jaxsr.dmri.models.conv import CONV_IMPLS, resolve_conv_impl
from jaxsr.train import sharding
from jaxsr.train.checkpoint import count_parameters
from jaxsr.train.loop import RNG_IMPL


def jax_step(config, hr_size: int):
  """(run one step, compile seconds, parameter count) of jaxsr's sharded, jitted train step."""
  mesh = sharding.make_mesh()
  model = build_model(config.model)
  rng = jax.random.key(config.seed, impl=RNG_IMPL)
  state = sharding.replicate(step_lib.create_train_state(model, config, rng), mesh)
  train_step = sharding.compile_train_step(step_lib.make_train_step(config), mesh)
  data = np.random.default_rng(0)
  batch = sharding.shard_batch(
      {k: data.random((config.batch_size,) + (hr_size,) * 3, dtype=np.float32)
       for k in ("hr", "t1")}, mesh)
  run, compile_s = compiled_step(train_step, state, batch, rng)
  return run, compile_s, count_parameters(state.params)


def torch_step(config, hr_size: int, device: str, compile_mode: str | None = None):
  """(run one step, parameter count) of the PyTorch reference on `device`: eager, or with the
  model under `torch.compile(mode=compile_mode)` when that is given."""
  import torch

  from benchmarks import torch_reference
  torch.manual_seed(0)
  model = torch_reference.CSRdMRI.from_config(config.model).to(device)
  params = torch_reference.count_parameters(model)
  if compile_mode is not None:
    model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
  compute_dtype = None if config.model.dtype == "float32" else getattr(torch, config.model.dtype)
  step = torch_reference.make_train_step(model, config.train.learning_rate,
                                         config.data.lr_patch_size, config.train.fft_weight,
                                         compute_dtype)
  data = np.random.default_rng(0)
  hr, t1 = (torch.from_numpy(data.random((config.batch_size,) + (hr_size,) * 3,
                                         dtype=np.float32)).to(device) for _ in range(2))
  return (lambda: float(step(hr, t1))), params


def model_flops(config, hr_size: int) -> float:
  """Model FLOPs of one train step: 3 × the forward pass's (forward, and backward at twice it).

  The forward pass (`reconstruct_grid` of the batch's LR input, native
  convolutions, the MLP over all queries at once) as XLA's cost analysis counts it
  before backend-specific rewrites. (The analysis counts a loop's body once, so a
  chunked MLP would be under-counted; its arithmetic is the same.)
  """
  model = build_model(config.model).clone(conv_impl="xla", mlp_chunk_rows=0)
  lr = jax.ShapeDtypeStruct((config.batch_size,) + (config.data.lr_patch_size,) * 3
                            + (config.model.in_channels,), np.float32)
  params = jax.eval_shape(lambda: init_params(model, jax.random.key(0, impl=RNG_IMPL),
                                              config.model.in_channels))
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, (hr_size,) * 3,
                                             method="reconstruct_grid"))
  return 3 * float(forward.lower(params, lr).cost_analysis()["flops"])


def model_flops_on_cpu(config, hr_size: int) -> float:
  """`model_flops`, counted by XLA:CPU: in a CPU-only child process on other backends.

  XLA:GPU counts nothing before compiling and, after, misses the convolutions it hands to
  cuDNN; the model's FLOPs are the same on every backend.
  """
  if jax.default_backend() == "cpu":
    return model_flops(config, hr_size)
  code = ("import json, sys, ml_collections; from benchmarks.train_step import model_flops; "
          "print(model_flops(ml_collections.ConfigDict(json.loads(sys.argv[1])), "
          "int(sys.argv[2])))")
  child = subprocess.run([sys.executable, "-c", code, config.to_json(), str(hr_size)],
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                         text=True, check=True)
  return float(child.stdout.split()[-1])


def compiled_step_shapes(config, num_steps: int) -> tuple[int, int]:
  """(HR patch sizes drawn, step programs compiled) over `num_steps` batches of a run's scales.

  The run's scale schedule with the smoke-sized model on random volumes: the jit
  cache of the sharded step is counted after every batch has gone through it.
  """
  small = csr_dmri.get_config("smoke")
  small.data.update({k: config.data[k] for k in ("lr_patch_size", "scale_min", "scale_max",
                                                 "num_scale_buckets")})
  sizes = pipeline.hr_patch_sizes(small.data.lr_patch_size, small.data.scale_min,
                                  small.data.scale_max, small.data.num_scale_buckets)
  mesh = sharding.make_mesh()
  rng = jax.random.key(0, impl=RNG_IMPL)
  state = sharding.replicate(
      step_lib.create_train_state(build_model(small.model), small, rng), mesh)
  train_step = sharding.compile_train_step(step_lib.make_train_step(small), mesh)
  draws = np.random.default_rng(0)
  seen = set()
  for _ in range(num_steps):
    size = int(draws.choice(sizes))  # as PatchSampler draws it for each batch
    seen.add(size)
    batch = {k: np.zeros((small.batch_size,) + (size,) * 3, np.float32) for k in ("hr", "t1")}
    state, _ = train_step(state, sharding.shard_batch(batch, mesh), rng)
  return len(seen), train_step._cache_size()  # noqa: SLF001 (jit's own count of programs)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="default", help="configs/csr_dmri.py variant")
  parser.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS,
                      help="JAX 3D convolution (model.conv_impl)")
  parser.add_argument("--scale", type=float, default=2.5, help="s: HR patches of (10·s)³")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both models (parameters and loss stay float32)")
  parser.add_argument("--torch-device", default=None,
                      help="PyTorch device (default: cuda when PyTorch sees one, else cpu)")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's peak TFLOP/s in the compute dtype, for model FLOPs "
                           "utilisation")
  parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
  parser.add_argument("--threads", type=int, default=None,
                      help="cores for JAX and PyTorch alike (default: all the process may use)")
  parser.add_argument("--compile-mode", default="default",
                      help="torch.compile mode of the third column (default, reduce-overhead, "
                      "max-autotune); none: no torch.compile column")
  parser.add_argument("--run-steps", type=int, default=300,
                      help="batches of the random-scale run whose compiled shapes are counted")
  args = parser.parse_args(argv)
  threads = set_threads(args.threads)  # before JAX starts its CPU backend

  config = csr_dmri.get_config(args.variant)
  config.model.conv_impl = args.conv_impl
  config.model.dtype = args.dtype
  if args.torch_device is None:
    import torch
    args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  hr_size = int(round(config.data.lr_patch_size * args.scale))
  voxels = config.batch_size * hr_size ** 3
  print(machine_report())
  print(f"config {args.variant}: batch {config.batch_size}, LR {config.data.lr_patch_size}³ -> "
        f"HR {hr_size}³ (s = {hr_size / config.data.lr_patch_size:g}), "
        f"conv_impl {args.conv_impl} ({resolve_conv_impl(args.conv_impl)}), compute dtype "
        f"{args.dtype}; PyTorch on {args.torch_device}")
  flops = model_flops_on_cpu(config, hr_size)
  print(f"model FLOPs per step: {flops / 1e9:,.1f} G (3 × the forward pass's)")
  peak = args.peak_tflops and args.peak_tflops * 1e12
  if peak is None and jax.default_backend() == "cpu":
    peak = matmul_peak_flops()
    print(f"peak for MFU: this CPU's measured float32 matrix multiply, {peak / 1e9:,.1f} GFLOP/s")
  sizes, programs = compiled_step_shapes(config, args.run_steps)
  print(f"compiled step programs over {args.run_steps} random-scale steps: {programs} "
        f"({sizes} HR patch sizes drawn, data.num_scale_buckets = "
        f"{config.data.num_scale_buckets})")
  runs, params, compiles = step_columns(
      jax_step(config, hr_size), lambda mode: torch_step(config, hr_size, args.torch_device, mode),
      args.compile_mode, rtol=1e-4 if args.dtype == "float32" else 2e-2)
  race_steps(runs, params=params, compile_s=compiles, threads=threads, rounds=args.rounds,
             steps=args.steps, work=voxels, work_unit="HR voxels", flops=flops, peak_flops=peak)


if __name__ == "__main__":
  main()
