"""The MRSI train step: critic updates and the generator update in one jitted XLA program.

`train_step(state, batch, rng) -> (state, metrics)`: the LR input is made inside
the step by keeping each acquired map's central n × n k-space (n per sample) and
dividing it by its own scale (`pipeline.lr_input`, as evaluation and
`jaxsr upsample-mrsi` do); the target is divided by the same scale. λ is drawn
per sample from U(0, λ_max) and fed to the generator's conditional instance
norms (exactly 0 for a fraction `lambda_zero_fraction` of the samples, so the
sharpness network also learns the plain λ = 0 output). Then

  critic    `num_critic` WGAN-GP updates (an unrolled `lax.scan`): D(fake) − D(real) +
            gp_weight · (‖∇D(x̂)‖ − 1)², x̂ on random lines between real and fake;
  generator one update of (1 − α)·L1 + α·(1 − MS-SSIM) + mean_i λ_i · (−D(fake_i)),
            inside the quality mask.

The critic sees (T1, FLAIR, LR map, real or super-resolved map) as channels. With
`adversarial=False` (the conditioning comparison of Table 1, λ = 0) the critic is
skipped and λ is 0. The state is a `GANState` pytree: compile with
`jaxsr.train.sharding.compile_train_step` (batch sharded over the mesh, state donated).

This module is also the family's restore interface (`FAMILY`, `MODEL_KINDS`,
`build_model`, `create_state`): `jaxsr.train.checkpoint.load_run` rebuilds a
run's state from it.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxsr.mrsi import pipeline
from jaxsr.mrsi.critic import Critic
from jaxsr.mrsi.loss import mrsi_loss
from jaxsr.mrsi.phantom import MAP_SIZE
from jaxsr.mrsi.unet import MRSIUNet

FAMILY = "mrsi"
MODEL_KINDS = ("mrsi_unet",)
TrainState = train_state.TrainState


@flax.struct.dataclass
class GANState:
  """Generator and critic train states (each with its own Adam)."""
  generator: TrainState
  critic: TrainState

  @property
  def params(self):
    """The model's parameters: the generator's (the critic only trains it)."""
    return self.generator.params


def build_model(config) -> MRSIUNet:
  """The generator a config's `model` section describes (float32 only)."""
  if config.kind not in MODEL_KINDS:
    raise ValueError(f"model.kind must be one of {MODEL_KINDS}, got {config.kind!r}")
  if config.get("dtype", "float32") != "float32":
    raise ValueError(f"model.kind={config.kind!r} computes in float32 only")
  return MRSIUNet(channels=tuple(config.channels), conditioning=config.conditioning,
                  num_metabolites=config.num_metabolites,
                  anatomy=config.get("anatomy", True),  # runs saved before the field: True
                  condition_mlp=tuple(config.get("condition_mlp", ())))


def build_critic(model_config) -> Critic:
  return Critic(channels=tuple(model_config.critic_channels), hidden=model_config.critic_hidden)


def create_state(config, rng: jax.Array) -> GANState:
  """The generator (the run's `MRSIUNet`) and critic train states: Adam at
  `train.learning_rate`, multiplied by `train.lr_decay_factor` every `train.lr_decay_steps`
  train steps (0: constant), for both networks (the critic updates num_critic times a step)."""
  t = config.train

  def schedule(updates_per_step):
    decay_steps = t.get("lr_decay_steps", 0) * updates_per_step
    return (optax.exponential_decay(t.learning_rate, decay_steps, t.lr_decay_factor,
                                    staircase=True) if decay_steps else t.learning_rate)

  return create_gan_state(build_model(config.model), build_critic(config.model), rng,
                          (MAP_SIZE, MAP_SIZE), learning_rate=schedule(1),
                          critic_learning_rate=schedule(t.num_critic))


def create_gan_state(generator, critic, rng: jax.Array, map_shape: tuple[int, int],
                     learning_rate: float | optax.Schedule = 1e-4,
                     critic_learning_rate: float | optax.Schedule | None = None) -> GANState:
  """Initialises both networks on one (1, H, W) example; Adam(learning_rate) for each.

  Learning rates may be optax schedules of each network's own update count;
  `critic_learning_rate` defaults to `learning_rate`.
  """
  g_rng, c_rng = jax.random.split(rng)
  # lazy_init: the same parameters as init, without running the forward passes op by op
  # (which compiled every op of the UNet once: most of a small run's start-up).
  image = jax.ShapeDtypeStruct((1, *map_shape), jnp.float32)
  scalar = jax.ShapeDtypeStruct((1,), jnp.float32)
  g_params = generator.lazy_init(g_rng, image, image, image, scalar,
                                 jax.ShapeDtypeStruct((1,), jnp.int32), scalar)["params"]
  c_params = critic.lazy_init(c_rng, jax.ShapeDtypeStruct((1, *map_shape, 4), jnp.float32)
                              )["params"]
  tx = lambda rate: optax.adam(rate, b1=0.5, b2=0.9)  # as usual for WGAN-GP
  critic_rate = learning_rate if critic_learning_rate is None else critic_learning_rate
  return GANState(TrainState.create(apply_fn=generator.apply, params=g_params, tx=tx(learning_rate)),
                  TrainState.create(apply_fn=critic.apply, params=c_params, tx=tx(critic_rate)))


def critic_inputs(batch: dict[str, jax.Array], lr: jax.Array, maps: jax.Array) -> jax.Array:
  """(B, H, W, 4): T1, FLAIR, the LR map and the real or super-resolved map."""
  return jnp.stack([batch["t1"], batch["flair"], lr, maps], axis=-1)


def gradient_penalty(critic_apply, params, real: jax.Array, fake: jax.Array,
                     rng: jax.Array) -> jax.Array:
  """Mean over samples of (‖∂D/∂x̂‖₂ − 1)² at x̂ = ε·real + (1 − ε)·fake, ε ~ U(0, 1) per sample."""
  with jax.named_scope("gradient_penalty"):  # names its ops in profiles (benchmarks.profile_step)
    eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
    mixed = eps * real + (1 - eps) * fake
    grads = jax.grad(lambda x: jnp.sum(critic_apply({"params": params}, x)))(mixed)
    norms = jnp.sqrt(jnp.sum(grads ** 2, axis=tuple(range(1, grads.ndim))) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def draw_lambda(rng: jax.Array, batch_size: int, lambda_max: float,
                zero_fraction: float) -> jax.Array:
  """(B,) λ ~ U(0, λ_max) per sample, exactly 0 for a fraction `zero_fraction` of them."""
  uniform_rng, zero_rng = jax.random.split(rng)
  lam = jax.random.uniform(uniform_rng, (batch_size,), maxval=lambda_max)
  return jnp.where(jax.random.uniform(zero_rng, (batch_size,)) < zero_fraction, 0.0, lam)


def make_train_step(config):
  """The pure `train_step(state, batch, rng)` of a run config (`make_mrsi_train_step` with its
  `train` settings), as `jaxsr.dmri.step.make_train_step` is dMRI's."""
  t = config.train
  return make_mrsi_train_step(alpha=t.alpha, gp_weight=t.gp_weight, num_critic=t.num_critic,
                              lambda_max=t.lambda_max,
                              lambda_zero_fraction=t.get("lambda_zero_fraction", 0.0),
                              adversarial=t.adversarial)


def make_mrsi_train_step(*, alpha: float = 0.84, gp_weight: float = 10.0, num_critic: int = 5,
                         lambda_max: float = 0.1, lambda_zero_fraction: float = 0.1,
                         adversarial: bool = True):
  """The pure train step (see the module docstring); jit it with `compile_train_step`.

  Batch: "hr" (B, H, W) acquired maps (any unit), "t1", "flair" (B, H, W), "mask"
  (B, H, W) quality mask, "n" (B,) matrix sizes, "metabolite" (B,) int indices.
  """

  def generate(params, state: GANState, batch, lr, lam):
    return state.generator.apply_fn({"params": params}, lr, batch["t1"], batch["flair"],
                                    batch["n"], batch["metabolite"], lam, batch["mask"])

  def critic_step(carry, rng):
    critic, real, fake = carry

    def loss_fn(params):
      scores_real = critic.apply_fn({"params": params}, real)
      scores_fake = critic.apply_fn({"params": params}, fake)
      penalty = gradient_penalty(critic.apply_fn, params, real, fake, rng)
      distance = jnp.mean(scores_real) - jnp.mean(scores_fake)
      return -distance + gp_weight * penalty, (distance, penalty)

    (loss, (distance, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(critic.params)
    critic = critic.apply_gradients(grads=grads)
    return (critic, real, fake), {"critic_loss": loss, "wasserstein": distance,
                                  "gradient_penalty": penalty}

  def train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array):
    lam_rng, critic_rng = jax.random.split(rng)
    lr, scale = pipeline.lr_input(batch["hr"], batch["n"])
    hr = batch["hr"] / scale[:, None, None]
    lam = (draw_lambda(lam_rng, hr.shape[0], lambda_max, lambda_zero_fraction) if adversarial
           else jnp.zeros(hr.shape[:1]))
    metrics = {}
    critic = state.critic
    if adversarial:
      fake = jax.lax.stop_gradient(generate(state.generator.params, state, batch, lr, lam))
      real = critic_inputs(batch, lr, hr * batch["mask"])
      # Unrolled: the same updates as a loop, which XLA's CPU backend runs markedly slower
      # (docs/benchmarks.md).
      with jax.named_scope("critic_updates"):
        (critic, _, _), critic_metrics = jax.lax.scan(
            critic_step, (critic, real, critic_inputs(batch, lr, fake)),
            jax.random.split(critic_rng, num_critic), unroll=True)
      metrics.update({k: v[-1] for k, v in critic_metrics.items()})

    def generator_loss(params):
      pred = generate(params, state, batch, lr, lam)
      loss, parts = mrsi_loss(pred, hr, batch["mask"], alpha)
      if adversarial:
        scores = critic.apply_fn({"params": critic.params}, critic_inputs(batch, lr, pred))
        adversarial_term = jnp.mean(lam * -scores)
        loss = loss + adversarial_term
        parts = {**parts, "adversarial": adversarial_term}
      return loss, parts

    (loss, parts), grads = jax.value_and_grad(generator_loss, has_aux=True)(
        state.generator.params)
    generator = state.generator.apply_gradients(grads=grads)
    metrics.update({"loss": loss, **parts, "grad_norm": optax.tree.norm(grads)})
    return GANState(generator, critic), metrics

  return train_step
