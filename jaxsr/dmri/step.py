"""The dMRI train step: one jitted XLA program, sharded over a device mesh.

`train_step(state, batch, rng) -> (state, metrics)` makes the LR input from the
HR crops (anti-aliased cubic degradation of the DWI and the T1 alike, unless the
batch brings its own LR images) and takes
one Adam step on L1 + fft_weight · mean|FFT(pred) − FFT(target)|. Implicit
models (`model.kind` csr_dmri) are queried at every HR voxel centre
(`CSRdMRI.reconstruct_grid`: separable interpolation, no gathers); fixed-scale
models (dcsrn, rescnn3d) map the LR DWI interpolated back onto the HR crop's
grid to the HR crop, and their state carries BatchNorm statistics.

The loop compiles it sharded over the device mesh (`jaxsr.train.sharding`).

This module is also the family's restore interface (`FAMILY`, `MODEL_KINDS`,
`build_model`, `create_state`): `jaxsr.train.checkpoint.load_run` rebuilds a
run's state from it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxsr.dmri.degradation.degrade import degrade, tricubic_upsample
from jaxsr.dmri.loss import csr_dmri_loss
from jaxsr.dmri.models import build_model, is_implicit
from jaxsr.dmri.models.factory import KINDS
from jaxsr.errors import ConfigError

FAMILY = "dmri"
MODEL_KINDS = KINDS

TrainState = train_state.TrainState


class BatchStatsTrainState(TrainState):
  """Train state of fixed-scale models: also BatchNorm running statistics ({} if none)."""
  batch_stats: Any = flax.struct.field(default_factory=dict)


def learning_rate_schedule(config) -> optax.Schedule:
  """Adam learning rate by `lr_schedule`.

  "staircase" (the paper's): `learning_rate`, multiplied by `lr_decay_factor` every
  `lr_decay_steps`. "cosine": linear warm-up over `warmup_steps` to `learning_rate`, then
  a cosine to 0 at `num_steps` (short runs: the whole budget is spent decaying).
  """
  kind = config.get("lr_schedule", "staircase")
  if kind == "staircase":
    return optax.exponential_decay(
        init_value=config.learning_rate, transition_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay_factor, staircase=True)
  if kind == "cosine":
    warmup = config.get("warmup_steps", 0)
    if not 0 <= warmup < config.num_steps:
      raise ConfigError(f"train.warmup_steps must be in [0, train.num_steps): {warmup}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=config.num_steps, end_value=0.0)
  raise ConfigError(f"train.lr_schedule must be 'staircase' or 'cosine': {kind!r}")


def create_train_state(model: nn.Module, config, rng: jax.Array) -> TrainState:
  """Initialises parameters (on one training patch) and the Adam state.

  Implicit models get a `TrainState`, fixed-scale ones a `BatchStatsTrainState`.
  """
  tx = optax.adam(learning_rate_schedule(config.train))
  lr_size = config.data.lr_patch_size
  if is_implicit(config.model.kind):
    lr = jnp.zeros((1, lr_size, lr_size, lr_size, config.model.in_channels), jnp.float32)
    coords = jnp.zeros((1, 8, 3), jnp.float32)
    params = jax.jit(model.init)(rng, lr, coords)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  hr = jnp.zeros((1,) + (2 * lr_size,) * 3 + (1,), jnp.float32)
  variables = jax.jit(model.init, static_argnames="train")(rng, hr, train=False)
  return BatchStatsTrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                     batch_stats=variables.get("batch_stats", {}))


def create_state(config, rng: jax.Array) -> TrainState:
  """The initial train state of the model `config.model` describes."""
  return create_train_state(build_model(config.model), config, rng)


def interpolated_input(hr: jax.Array, lr_size: int) -> jax.Array:
  """(B, M, M, M) HR crops -> (B, M, M, M, 1): degraded to l^3 voxels, tricubic back to M^3."""
  lr = degrade(hr, (lr_size,) * 3)
  return tricubic_upsample(lr, hr.shape[1:])[..., None]


def make_lr_input(batch: dict[str, jax.Array], lr_size: int, use_t1: bool) -> jax.Array:
  """(B, M, M, M) HR crops -> (B, l, l, l, 1 or 2) LR model input (DWI, then T1).

  A batch that brings its own LR acquisition (`batch["lr"]`, (B, l, l, l): the
  domain-randomised data of `jaxsr.dmri.data.randomised`, made with a random PSF) is
  taken as it is (DWI-only models).
  """
  if "lr" in batch:
    if use_t1:
      raise ValueError("batches with their own LR images carry no T1: use model.in_channels=1")
    return batch["lr"][..., None]
  lr_shape = (lr_size,) * 3
  channels = [degrade(batch["hr"], lr_shape)]
  if use_t1:
    channels.append(degrade(batch["t1"], lr_shape))
  return jnp.stack(channels, axis=-1)


def random_flips(batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
  """Flips each example's DWI and T1 crops alike along each spatial axis with probability 1/2."""
  flips = jax.random.bernoulli(rng, 0.5, (batch["hr"].shape[0], 3))

  def flip_one(volume, flip):
    for axis in range(3):
      volume = jnp.where(flip[axis], jnp.flip(volume, axis), volume)
    return volume

  return {k: jax.vmap(flip_one)(v, flips) for k, v in batch.items()}


def make_train_step(config) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
  """Builds the pure train step for `config` (not yet jitted; see `compile_train_step`)."""
  lr_size = config.data.lr_patch_size
  use_t1 = config.model.in_channels == 2
  implicit = is_implicit(config.model.kind)
  fft_weight = config.train.fft_weight
  augment = config.train.augment_flips
  schedule = learning_rate_schedule(config.train)

  def implicit_loss(params, state, hr, batch):
    lr = make_lr_input(batch, lr_size, use_t1)
    pred = state.apply_fn({"params": params}, lr, hr.shape[1:], method="reconstruct_grid")
    loss, parts = csr_dmri_loss(pred, hr, fft_weight)
    return loss, (parts, {})

  def interpolated_loss(params, state, hr, batch):
    variables = {"params": params, "batch_stats": state.batch_stats}
    pred, updates = state.apply_fn(variables, interpolated_input(hr, lr_size), train=True,
                                   mutable=["batch_stats"])
    loss, parts = csr_dmri_loss(pred[..., 0], hr, fft_weight)
    return loss, (parts, updates)

  loss_fn = implicit_loss if implicit else interpolated_loss

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    if augment:
      batch = random_flips(batch, rng)
    hr = batch["hr"]
    (loss, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, hr, batch)
    new_state = state.apply_gradients(grads=grads)
    if not implicit:
      new_state = new_state.replace(batch_stats=updates.get("batch_stats", {}))
    metrics = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step)}
    return new_state, metrics

  return train_step


