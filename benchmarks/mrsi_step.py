"""MRSI train-step throughput: jaxsr's jitted generator + critic step against the same in PyTorch,
eager and with the generator under torch.compile.

  python -m benchmarks.mrsi_step [--variant default] [--conditioning filter_scaling_met] [--rounds 5]
                                 [--threads N] [--compile-mode default|none|max-autotune]

The adversarial step of `configs/mrsi.py` (the network trained for adjustable
sharpness): `train.num_critic` WGAN-GP critic updates, then one generator update
of (1 − α)·L1 + α·(1 − MS-SSIM) + λ·(−D), on a batch of `batch_size` 64 × 64
maps with random n, metabolites and quality masks. JAX runs it as one XLA
program (`jaxsr.mrsi.step`, critic loop in `lax.scan`); PyTorch eager runs
`benchmarks.torch_mrsi_reference` (same networks and parameter counts, asserted;
per-sample kernels as a grouped convolution, the penalty by double backward), and
the same with the generator under `torch.compile(mode=--compile-mode)` (the critic
stays eager: torch.compile does not differentiate twice; first loss checked equal
to eager's). JAX and PyTorch run on the same `--threads` cores. After warm-up,
rounds alternate (`benchmarks.time_alternating`). The last lines are the ratios of
JAX's throughput to each PyTorch column.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import compiled_step, machine_report, race_steps, set_threads, step_columns
from configs import mrsi as mrsi_config
from jaxsr.mrsi import step as mrsi_step
from jaxsr.mrsi.phantom import MAP_SIZE
from jaxsr.train import sharding
from jaxsr.train.checkpoint import count_parameters
from jaxsr.train.loop import RNG_IMPL


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of `config.batch_size` random maps with n, metabolite and quality mask per sample."""
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, MAP_SIZE, MAP_SIZE)
  batch = {k: rng.random(shape, dtype=np.float32) for k in ("hr", "t1", "flair")}
  batch["mask"] = (rng.random(shape) > 0.1).astype(np.float32)
  batch["n"] = rng.choice(np.asarray(config.data.n_values), config.batch_size).astype(np.int32)
  batch["metabolite"] = rng.integers(0, config.model.num_metabolites,
                                     config.batch_size).astype(np.int32)
  return batch


def jax_step(config, batch):
  """(run one step, compile seconds, generator + critic parameter count)."""
  mesh = sharding.make_mesh()
  rng = jax.random.key(config.seed, impl=RNG_IMPL)
  state = sharding.replicate(mrsi_step.create_state(config, rng), mesh)
  train_step = sharding.compile_train_step(mrsi_step.make_train_step(config), mesh)
  batch = sharding.shard_batch(batch, mesh)
  run, compile_s = compiled_step(train_step, state, batch, rng)
  return run, compile_s, count_parameters(state.generator.params) + count_parameters(state.critic.params)


def torch_step(config, batch, compile_mode: str | None = None):
  """(run one step, generator + critic parameter count) of the PyTorch reference: eager, or with
  the generator under `torch.compile(mode=compile_mode)` when that is given (the critic stays
  eager: its gradient penalty differentiates twice, which torch.compile does not support)."""
  import torch

  from benchmarks import torch_mrsi_reference as ref
  from benchmarks.torch_reference import count_parameters as torch_count
  torch.manual_seed(0)
  m, t = config.model, config.train
  generator = ref.MRSIUNet(m.channels, m.conditioning, m.num_metabolites)
  critic = ref.Critic(MAP_SIZE, m.critic_channels, m.critic_hidden)
  params = torch_count(generator) + torch_count(critic)
  if compile_mode is not None:
    generator = torch.compile(generator, mode=None if compile_mode == "default" else compile_mode)
  step = ref.make_train_step(generator, critic, learning_rate=t.learning_rate, alpha=t.alpha,
                             gp_weight=t.gp_weight, num_critic=t.num_critic,
                             lambda_max=t.lambda_max,
                             lambda_zero_fraction=t.lambda_zero_fraction)
  tensors = {k: torch.from_numpy(v.astype(np.int64) if k == "metabolite" else v)
             for k, v in batch.items()}
  return (lambda: step(tensors)), params


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="default", help="configs/mrsi.py variant")
  parser.add_argument("--conditioning", default="filter_scaling_met",
                      choices=("filter_scaling_met", "filter_scaling"),
                      help="the generator's conditioning (model.conditioning)")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
  parser.add_argument("--threads", type=int, default=None,
                      help="cores for JAX and PyTorch alike (default: all the process may use)")
  parser.add_argument("--compile-mode", default="default",
                      help="torch.compile mode of the generator in the third column; none: no "
                      "torch.compile column")
  args = parser.parse_args(argv)
  threads = set_threads(args.threads)  # before JAX starts its CPU backend

  config = mrsi_config.get_config(args.variant)
  config.model.conditioning = args.conditioning
  config.train.adversarial = True
  batch = random_batch(config)
  print(machine_report())
  print(f"config {args.variant}: batch {config.batch_size} maps of {MAP_SIZE}², UNet "
        f"{tuple(config.model.channels)} ({args.conditioning}), critic "
        f"{tuple(config.model.critic_channels)}, {config.train.num_critic} critic updates per "
        f"generator update; parameters counted over generator + critic")
  runs, params, compiles = step_columns(
      jax_step(config, batch), lambda mode: torch_step(config, batch, mode), args.compile_mode)
  race_steps(runs, params=params, compile_s=compiles, threads=threads, rounds=args.rounds,
             steps=args.steps, work=config.batch_size, work_unit="maps")

if __name__ == "__main__":
  main()
