"""Whole-volume super-resolution: jaxsr's planned reconstruction against PyTorch slice-wise
decoding, eager and under torch.compile.

  python -m benchmarks.infer_volume [--hr-shape 145,174,145] [--scale 2] [--max-memory 4G]
                                    [--sizes 0.5,0.75] [--rounds 2] [--threads N]
                                    [--compile-mode default|none|max-autotune]

The default CSR-dMRI architecture (random weights: time and memory do not depend
on them) super-resolves a random LR volume of round(N / s) voxels per axis, with
its T1 channel, onto the HR grid. Each measurement is one child process, so its
peak resident memory (`ru_maxrss`) is its own:

* JAX: `jaxsr.dmri.inference.memory.plan_memory` under `--max-memory`, then `reconstruct`
  (encoder in one pass or tiles, decoder in chunks), as `jaxsr upsample` does for
  one volume: the wall time includes planning and compilation, and is split into
  planning, encoder and decoder;
* PyTorch eager (`benchmarks.torch_reference`): the ArSSR-style loop, the encoder
  on the whole LR volume, then the decoder one HR slice (X index) at a time, under
  `torch.inference_mode`;
* the same with the encoder and the decoder's MLP under `torch.compile(mode=--compile-mode)`
  (inductor); its wall time includes compiling, as JAX's does.

Each child runs the volume twice: the first pass (what one `jaxsr upsample` call pays,
compilation included) and a second with everything compiled; the difference is reported as
the compile time. The children alternate (JAX, eager, torch.compile) for `--rounds` rounds
and the medians are reported; each child runs on the same `--threads` cores (default all).

`--sizes` adds JAX runs at fractions of the output voxels (each axis scaled by
the cube root), to show how peak memory grows with output size. The last lines are
the ratios of JAX's first-pass throughput to each PyTorch column's.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks import machine_report, set_threads

IN_CHANNELS = 2


def parse_bytes(text: str) -> int:
  units = {"K": 2**10, "M": 2**20, "G": 2**30}
  return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def inputs(hr_shape, scale):
  from jaxsr.dmri.degradation.degrade import lr_shape_for_scale
  lr_shape = lr_shape_for_scale(hr_shape, scale)
  return np.random.default_rng(0).random(lr_shape + (IN_CHANNELS,), dtype=np.float32)


def run_jax(hr_shape, scale, max_bytes) -> dict:
  """Plan and reconstruct twice; the first pass's times and the second pass's seconds."""
  import jax

  from configs import csr_dmri
  from jaxsr.dmri.inference import memory, reconstruct
  from jaxsr.dmri.models import build_model
  from jaxsr.dmri.models.csr_dmri import init_params
  from jaxsr.train.loop import RNG_IMPL
  model = build_model(csr_dmri.get_config().model)
  params = init_params(model, jax.random.key(0, impl=RNG_IMPL), IN_CHANNELS)
  lr = inputs(hr_shape, scale)
  start = time.perf_counter()
  plan = memory.plan_memory(model, params, IN_CHANNELS, lr.shape[:3], hr_shape, max_bytes)
  plan_s = time.perf_counter() - start
  passes = []  # the time of each encoder tile and decoder chunk, in order
  out = reconstruct.reconstruct(model, params, lr, hr_shape, plan.chunk_size, plan.tile,
                              progress=lambda _: passes.append(time.perf_counter()),
                              conv_impl=plan.conv_impl)
  seconds = time.perf_counter() - start
  assert out.shape == tuple(hr_shape) and np.isfinite(out).all()
  tiles = len(passes) - math.ceil(math.prod(hr_shape) / plan.chunk_size)
  encoder_s = passes[tiles - 1] - start - plan_s
  start = time.perf_counter()
  reconstruct.reconstruct(model, params, lr, hr_shape, plan.chunk_size, plan.tile,
                          conv_impl=plan.conv_impl)
  again_s = time.perf_counter() - start
  return {"seconds": seconds, "again_s": again_s, "plan_s": plan_s, "encoder_s": encoder_s,
          "decoder_s": seconds - plan_s - encoder_s, "tile": plan.tile,
          "conv_impl": plan.conv_impl, "chunk_size": plan.chunk_size,
          "estimate_mib": plan.peak_bytes / 2**20}


def run_torch(hr_shape, scale, compile_mode: str | None = None) -> dict:
  """Encode, then decode slice by slice, twice; eager, or the encoder and the MLP under
  `torch.compile(mode=compile_mode)`."""
  import torch

  from benchmarks import torch_reference
  from configs import csr_dmri
  torch.manual_seed(0)
  model = torch_reference.CSRdMRI.from_config(csr_dmri.get_config().model).eval()
  if compile_mode is not None:
    mode = None if compile_mode == "default" else compile_mode
    model.encoder, model.mlp = torch.compile(model.encoder, mode=mode), torch.compile(model.mlp,
                                                                                      mode=mode)
  lr = torch.from_numpy(inputs(hr_shape, scale)).permute(3, 0, 1, 2)[None]
  out = np.empty(hr_shape, np.float32)

  def one_pass() -> tuple[float, float]:
    start = time.perf_counter()
    with torch.inference_mode():
      latent = model.encode(lr)
      encoder_s = time.perf_counter() - start
      plane = torch_reference.grid_coordinates((1,) + tuple(hr_shape[1:]))
      for x in range(hr_shape[0]):
        coords = plane.clone()
        coords[:, 0] = (2 * x + 1 - hr_shape[0]) / hr_shape[0]
        out[x] = model.decode(latent, coords[None])[0].reshape(hr_shape[1:]).numpy()
    return time.perf_counter() - start, encoder_s

  seconds, encoder_s = one_pass()
  assert np.isfinite(out).all()
  again_s, _ = one_pass()
  return {"seconds": seconds, "again_s": again_s, "encoder_s": encoder_s,
          "decoder_s": seconds - encoder_s}


def child(args) -> None:
  set_threads(args.threads)  # before JAX starts its CPU backend
  hr_shape = tuple(int(n) for n in args.hr_shape.split(","))
  result = (run_jax(hr_shape, args.scale, parse_bytes(args.max_memory))
            if args.child == "jax" else
            run_torch(hr_shape, args.scale, args.compile_mode if args.child == "compile" else None))
  result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(result))


def measure(kind: str, hr_shape, args) -> dict:
  command = [sys.executable, "-m", "benchmarks.infer_volume", "--child", kind,
             "--hr-shape", ",".join(map(str, hr_shape)), "--scale", str(args.scale),
             "--max-memory", args.max_memory, "--compile-mode", args.compile_mode]
  if args.threads is not None:
    command += ["--threads", str(args.threads)]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"{kind} run failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def median_run(results: list[dict]) -> dict:
  """The run of median first-pass wall time (the upper median for an even count)."""
  return sorted(results, key=lambda r: r["seconds"])[len(results) // 2]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--hr-shape", default="145,174,145", help="output grid X,Y,Z (voxels)")
  parser.add_argument("--scale", type=float, default=2.0)
  parser.add_argument("--max-memory", default="4G", help="JAX memory budget (jaxsr upsample's)")
  parser.add_argument("--sizes", default="0.5,0.75",
                      help="extra JAX runs at these fractions of the output voxels ('' for none)")
  parser.add_argument("--rounds", type=int, default=2,
                      help="rounds of alternating child processes (medians reported)")
  parser.add_argument("--threads", type=int, default=None,
                      help="cores for every child, JAX and PyTorch alike (default: all)")
  parser.add_argument("--compile-mode", default="default",
                      help="torch.compile mode of the third column; none: no such column")
  parser.add_argument("--child", choices=("jax", "torch", "compile"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args)

  hr_shape = tuple(int(n) for n in args.hr_shape.split(","))
  voxels = math.prod(hr_shape)
  print(machine_report())
  print(f"default CSR-dMRI architecture, {IN_CHANNELS} input channels; output "
        f"{'×'.join(map(str, hr_shape))} ({voxels:,} voxels) at s = {args.scale:g}; "
        f"JAX budget {args.max_memory}\n")
  kinds = {"jax": "JAX (jaxsr reconstruct)", "torch": "PyTorch eager, per slice"}
  if args.compile_mode != "none":
    kinds["compile"] = f"torch.compile ({args.compile_mode}), per slice"
  runs = {kind: [] for kind in kinds}
  for _ in range(args.rounds):
    for kind in kinds:
      runs[kind].append(measure(kind, hr_shape, args))
  results = {kind: median_run(rs) for kind, rs in runs.items()}
  threads = set_threads(args.threads)
  print(f"{args.rounds} round(s) of alternating children, {threads} thread(s) each; medians\n")
  print("| implementation | wall time (s) | encoder (s) | decoder (s) | output voxels/s "
        "| compiled, second pass (s) | compile (s) | peak RSS (MiB) |")
  print("|---|---|---|---|---|---|---|---|")
  for name, label in kinds.items():
    r = results[name]
    print(f"| {label} | {r['seconds']:.1f} | {r['encoder_s']:.1f} | {r['decoder_s']:.1f} | "
          f"{voxels / r['seconds']:,.0f} | {r['again_s']:.1f} | "
          f"{r['seconds'] - r['again_s']:.1f} | {r['peak_rss_mib']:,.0f} |")
  jax_plan = results["jax"]
  print(f"\nJAX plan ({jax_plan['plan_s']:.1f} s of the wall time, compiling the encoder "
        f"and decoder to measure them; encoder and decoder times include compiling them): "
        f"encoder tile {jax_plan['tile']} ({jax_plan['conv_impl']} convolution), decoder "
        f"chunk {jax_plan['chunk_size']:,}; estimated peak {jax_plan['estimate_mib']:,.0f} MiB")
  fractions = [float(f) for f in args.sizes.split(",") if f]
  if fractions:
    print("\n| output voxels | JAX peak RSS (MiB) | estimated peak (MiB) | wall time (s) |\n"
          "|---|---|---|---|")
    rows = []
    for fraction in sorted(fractions) + [1.0]:
      shape = tuple(max(1, round(n * fraction ** (1 / 3))) for n in hr_shape)
      r = jax_plan if fraction == 1.0 else measure("jax", shape, args)
      rows.append((math.prod(shape), r["peak_rss_mib"]))
      print(f"| {math.prod(shape):,} ({'×'.join(map(str, shape))}) | {r['peak_rss_mib']:,.0f} | "
            f"{r['estimate_mib']:,.0f} | {r['seconds']:.1f} |")
    (v0, m0), (v1, m1) = rows[0], rows[-1]
    print(f"growth from the smallest to the largest: {m1 - m0:,.0f} MiB for "
          f"{(v1 - v0) / 1e6:.2f} M more voxels ({(m1 - m0) / ((v1 - v0) / 1e6):,.0f} MiB per "
          "million; linear growth keeps this per-million figure constant)")
  for kind, label in kinds.items():
    if kind != "jax":
      print(f"JAX / {label} volume-inference throughput (first pass): "
            f"{results[kind]['seconds'] / results['jax']['seconds']:.2f}; compiled: "
            f"{results[kind]['again_s'] / results['jax']['again_s']:.2f}")


if __name__ == "__main__":
  main()
