"""The MRSI GAN train step: one jitted program with the critic scan and the generator update."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.mrsi.critic import Critic
from jaxsr.mrsi.step import create_gan_state, draw_lambda, gradient_penalty, make_mrsi_train_step
from jaxsr.mrsi.unet import MRSIUNet
from jaxsr.train import sharding


def tiny_batch(seed=0, size=16, batch=2):
  rng = np.random.default_rng(seed)
  return {"hr": rng.random((batch, size, size), dtype=np.float32),
          "t1": rng.random((batch, size, size), dtype=np.float32),
          "flair": rng.random((batch, size, size), dtype=np.float32),
          "mask": (rng.random((batch, size, size)) > 0.1).astype(np.float32),
          "n": np.array([8, 12][:batch] * (batch // 2 or 1), np.int32)[:batch],
          "metabolite": np.arange(batch, dtype=np.int32) % 7}


def tiny_state(seed=0):
  # Plain convolutions: the step's structure does not depend on the conditioning (each
  # conditioning is tested in test_mrsi_models), and the conditioned ones compile 2× longer.
  return create_gan_state(MRSIUNet(channels=(4, 8), conditioning="none"),
                          Critic(channels=(4, 8), hidden=8),
                          jax.random.key(seed, impl="rbg"), (16, 16), learning_rate=1e-3)


def test_gradient_penalty_of_a_linear_critic():
  """D(x) = <w, x>: the gradient is w everywhere, so the penalty is (|w| - 1)^2."""
  w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)), jnp.float32)
  apply = lambda variables, x: jnp.sum(x * variables["params"], axis=(1, 2))
  real, fake = (jnp.asarray(np.random.default_rng(s).random((3, 4, 4)), jnp.float32)
                for s in (2, 3))
  penalty = gradient_penalty(apply, w, real, fake, jax.random.key(0, impl="rbg"))
  np.testing.assert_allclose(penalty, (jnp.linalg.norm(w) - 1) ** 2, rtol=1e-5)


def test_critic_and_generator_updates_are_one_jitted_program():
  mesh = sharding.make_mesh()
  state = sharding.replicate(tiny_state(), mesh)
  train_step = sharding.compile_train_step(make_mrsi_train_step(num_critic=3), mesh)
  batch = sharding.shard_batch(tiny_batch(), mesh)
  traced = train_step.trace(state, batch, jax.random.key(1, impl="rbg"))  # traced once
  text = traced.lower().as_text()
  assert text.count("func.func public @main") == 1  # one program: critic and generator
  # The critic updates are one scan of num_critic steps, unrolled (as a loop, XLA:CPU ran
  # the step slower).
  scans = [e for e in traced.jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  assert [(e.params["length"], e.params["unroll"]) for e in scans] == [(3, 3)]
  before = jax.device_get(state)
  new_state, metrics = train_step(state, batch, jax.random.key(1, impl="rbg"))  # one call
  assert int(new_state.critic.step) == 3 and int(new_state.generator.step) == 1
  for old, new in ((before.critic.params, new_state.critic.params),
                   (before.generator.params, new_state.generator.params)):
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), old, new)
    assert any(jax.tree_util.tree_leaves(changed))
  assert set(metrics) >= {"loss", "l1", "ms_ssim", "adversarial", "critic_loss", "wasserstein",
                          "gradient_penalty", "grad_norm"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # A second step reuses the compiled program.
  train_step(new_state, batch, jax.random.key(2, impl="rbg"))
  assert train_step._cache_size() == 1


def test_without_adversarial_loss_the_critic_is_left_alone_and_the_loss_falls():
  state = tiny_state(seed=1)
  train_step = jax.jit(make_mrsi_train_step(adversarial=False))
  batch = {k: jnp.asarray(v) for k, v in tiny_batch(seed=4).items()}
  critic_before = jax.device_get(state.critic.params)
  losses = []
  for i in range(8):
    state, metrics = train_step(state, batch, jax.random.key(i, impl="rbg"))
    losses.append(float(metrics["loss"]))
  assert "adversarial" not in metrics and "critic_loss" not in metrics
  assert int(state.critic.step) == 0
  jax.tree.map(np.testing.assert_array_equal, critic_before, jax.device_get(state.critic.params))
  assert losses[-1] < losses[0], losses


def test_a_fraction_of_the_samples_is_drawn_at_lambda_zero():
  lam = np.asarray(draw_lambda(jax.random.key(3, impl="rbg"), 20_000, 0.1, 0.1))
  zeros = np.mean(lam == 0)
  assert 0.09 < zeros < 0.11
  rest = lam[lam > 0]
  assert rest.max() <= 0.1 and abs(rest.mean() - 0.05) < 0.002  # uniform on (0, 0.1)
  assert np.all(np.asarray(draw_lambda(jax.random.key(0), 50, 0.1, 0.0)) > 0)
