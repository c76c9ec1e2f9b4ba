"""Where a train step's time goes on this machine: XLA ops, by model part and kind.

  python -m benchmarks.profile_step [--task dmri] [--variant quick] [--scale 2.5] [--steps 10]
                                    [--top 10]
  python -m benchmarks.profile_step --task mrsi [--variant default] [--steps 3]

Compiles jaxsr's train step, traces `--steps` steps with `jax.profiler` (the
trace JAX writes in Perfetto's JSON form, read back here) and sums each XLA op's
time by the part of the model its HLO metadata names and by the kind of op.
dMRI: the step of `configs/csr_dmri.py:VARIANT` at one scale s (HR patches of
(lr_patch_size·s)³); parts encoder, decoder MLP, feature sampling, FFT loss,
degradation, other. MRSI: the adversarial step of `configs/mrsi.py:VARIANT`
(the network of adjustable sharpness, as `benchmarks.mrsi_step` times it) on a
random batch; parts the critic updates' gradient penalties, the rest of the
critic updates, MS-SSIM, the generator (UNet), the critic's score of the
generator's output, other (Adam, the LR input's truncation and scaling).
Kinds: YNNPACK fusions (XLA:CPU's library calls for products and convolutions), plain `dot`s
(XLA's own matrix products; in the train step, the weight gradients), other
convolutions, and loop fusions (elementwise work, copies, concatenations,
reductions). Prints the step time untraced, the sums and the `--top` ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import numpy as np

from benchmarks import machine_report
from benchmarks.mrsi_step import random_batch
from configs import csr_dmri
from configs import mrsi as mrsi_config
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.models import build_model
from jaxsr.mrsi import step as gan_step
from jaxsr.train.loop import RNG_IMPL

# Per task: (part, substrings of an op's JAX source path that put it there), first match wins.
# The MRSI names are `jax.named_scope`s of jaxsr.mrsi.step and .loss, and the modules'.
PARTS = {
    "dmri": (("encoder (RDN)", ("/encoder/",)), ("decoder MLP", ("/mlp/",)),
             ("feature sampling", ("sample_trilinear",)), ("FFT loss", ("fft",)),
             ("degradation", ("resize", "scale_and_translate"))),
    "mrsi": (("critic updates: gradient penalty", ("gradient_penalty",)),
             ("critic updates: scores, Adam", ("critic_updates",)),
             ("MS-SSIM loss", ("ms_ssim",)), ("generator (UNet)", ("MRSIUNet",)),
             ("critic score of the output", ("Critic",))),
}


def op_sources(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: the JAX op_name of its metadata} of a compiled module's text."""
  pattern = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.M)
  sources: dict[str, str] = {}
  for name, source in pattern.findall(hlo_text):
    sources.setdefault(name, source)
  return sources


def part_of(source: str, task: str = "dmri") -> str:
  for part, keys in PARTS[task]:
    if any(key in source for key in keys):
      return part
  return "other"


def kind_of(name: str) -> str:
  if name.startswith("ynn_fusion"):
    return "YNNPACK fusion"
  if name.startswith("dot"):
    return "XLA dot"
  if name.startswith("convolution"):
    return "XLA convolution"
  return "loop fusion / copy"


def traced_op_times(run, steps: int) -> dict[str, float]:
  """{op name: seconds summed over `steps` calls of run()} from a jax.profiler trace."""
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(run())
    path = sorted(glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as file:
      events = json.load(file)["traceEvents"]
  times: collections.Counter = collections.Counter()
  for event in events:
    if event.get("ph") == "X":  # complete events: one execution of one op (µs)
      times[event["name"]] += event["dur"] * 1e-6
  return times


def dmri_step(variant: str, scale: float):
  """(compiled step, its arguments, description) of the CSR-dMRI step at HR (lr_patch_size·s)³."""
  config = csr_dmri.get_config(variant)
  hr_size = int(round(config.data.lr_patch_size * scale))
  rng = jax.random.key(config.seed, impl=RNG_IMPL)
  state = step_lib.create_train_state(build_model(config.model), config, rng)
  data = np.random.default_rng(0)
  batch = {k: data.random((config.batch_size,) + (hr_size,) * 3, dtype=np.float32)
           for k in ("hr", "t1")}
  compiled = jax.jit(step_lib.make_train_step(config)).lower(state, batch, rng).compile()
  return compiled, (state, batch, rng), (f"{variant} train step, batch {config.batch_size}, "
                                         f"HR {hr_size}³")


def mrsi_step(variant: str):
  """(compiled step, its arguments, description) of the adversarial MRSI step on random maps."""
  config = mrsi_config.get_config(variant)
  config.train.adversarial = True
  rng = jax.random.key(config.seed, impl=RNG_IMPL)
  state = gan_step.create_state(config, rng)
  batch = random_batch(config)
  compiled = jax.jit(gan_step.make_train_step(config)).lower(state, batch, rng).compile()
  return compiled, (state, batch, rng), (
      f"{variant} adversarial MRSI step, batch {config.batch_size}, "
      f"{config.train.num_critic} critic updates")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", default="dmri", choices=tuple(PARTS))
  parser.add_argument("--variant", default=None,
                      help="configs/csr_dmri.py (default quick) or configs/mrsi.py (default "
                      "default) variant")
  parser.add_argument("--scale", type=float, default=2.5,
                      help="dMRI: s, HR patches of (lr_patch_size·s)³")
  parser.add_argument("--steps", type=int, default=10, help="traced (and timed) steps")
  parser.add_argument("--top", type=int, default=10, help="ops listed one by one")
  args = parser.parse_args(argv)
  print(machine_report())
  if args.task == "dmri":
    compiled, arguments, description = dmri_step(args.variant or "quick", args.scale)
  else:
    compiled, arguments, description = mrsi_step(args.variant or "default")
  run = lambda: compiled(*arguments)  # the same state each time: no donation here
  for _ in range(3):
    jax.block_until_ready(run())
  start = time.perf_counter()
  for _ in range(args.steps):
    jax.block_until_ready(run())
  step_s = (time.perf_counter() - start) / args.steps
  sources = op_sources(compiled.as_text())
  times = {name: t / args.steps for name, t in traced_op_times(run, args.steps).items()
           if name in sources}
  total = sum(times.values())
  print(f"{description}: {1e3 * step_s:.1f} ms/step untraced, XLA ops {1e3 * total:.1f} "
        "ms/step traced")
  by_part, by_part_kind = collections.Counter(), collections.Counter()
  for name, t in times.items():
    part = part_of(sources[name], args.task)
    by_part[part] += t
    by_part_kind[(part, kind_of(name))] += t
  for part, t in by_part.most_common():
    print(f"  {part:32s} {1e3 * t:8.1f} ms  {100 * t / total:5.1f} %")
    for (p, kind), tk in by_part_kind.most_common():
      if p == part:
        print(f"    {kind:20s} {1e3 * tk:8.1f} ms")
  print(f"top {args.top} ops:")
  for name, t in sorted(times.items(), key=lambda item: -item[1])[:args.top]:
    print(f"  {1e3 * t:7.2f} ms  {name:28s} {sources[name][-80:]}")


if __name__ == "__main__":
  main()
