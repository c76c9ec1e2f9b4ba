"""Train steps of the fixed-scale CNNs: interpolated input, BatchNorm statistics, known first loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcsrn, rescnn3d
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.degradation.degrade import degrade, tricubic_upsample
from jaxsr.dmri.models import build_model
from jaxsr.errors import ConfigError


def _batch(size, seed=0):
  rng = np.random.default_rng(seed)
  x = np.linspace(0, 3, size)
  smooth = np.sin(x[:, None, None] + x[None, :, None] * 2 + x[None, None, :])
  hr = np.stack([0.5 + 0.3 * smooth + 0.05 * rng.standard_normal((size,) * 3)
                 for _ in range(2)]).astype(np.float32)
  return {"hr": jnp.asarray(hr), "t1": jnp.asarray(hr)}


def _state_and_step(config_module):
  config = config_module.get_config("smoke")
  model = build_model(config.model)
  state = step_lib.create_train_state(model, config, jax.random.key(0, impl="rbg"))
  return config, state, jax.jit(step_lib.make_train_step(config))


def test_rescnn3d_with_zero_residual_starts_at_the_interpolation_error():
  config, state, train_step = _state_and_step(rescnn3d)
  assert isinstance(state, step_lib.BatchStatsTrainState) and state.batch_stats == {}
  state = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
  size = int(config.data.lr_patch_size * config.data.scale_min)
  batch = _batch(size)
  lr = degrade(batch["hr"], (config.data.lr_patch_size,) * 3)
  expected = jnp.mean(jnp.abs(tricubic_upsample(lr, (size,) * 3) - batch["hr"]))
  _, metrics = train_step(state, batch, jax.random.key(1, impl="rbg"))
  assert float(metrics["l1"]) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)  # no FFT term


def test_dcsrn_step_updates_batch_statistics_and_lowers_the_loss():
  config, state, train_step = _state_and_step(dcsrn)
  size = int(config.data.lr_patch_size * config.data.scale_min)
  batch = _batch(size)
  stats0 = jax.device_get(state.batch_stats)
  losses = []
  for i in range(30):
    state, metrics = train_step(state, batch, jax.random.key(i, impl="rbg"))
    losses.append(float(metrics["loss"]))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), stats0, state.batch_stats)
  assert min(jax.tree_util.tree_leaves(moved)) > 0  # every running mean/var was updated
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 30


def test_learning_rate_schedules_follow_their_definitions():
  config = dcsrn.get_config("smoke").train
  config.update(num_steps=100, learning_rate=2e-3, lr_decay_steps=30, lr_decay_factor=0.5)
  staircase = step_lib.learning_rate_schedule(config)
  for step, rate in ((0, 2e-3), (29, 2e-3), (30, 1e-3), (95, 2.5e-4)):
    assert float(staircase(step)) == pytest.approx(rate)
  config.update(lr_schedule="cosine", warmup_steps=10)
  cosine = step_lib.learning_rate_schedule(config)
  for step, rate in ((0, 0.0), (5, 1e-3), (10, 2e-3), (55, 1e-3), (100, 0.0)):
    assert float(cosine(step)) == pytest.approx(rate, abs=1e-9)
  with pytest.raises(ConfigError, match="warmup_steps"):
    config.update(warmup_steps=100)
    step_lib.learning_rate_schedule(config)
  with pytest.raises(ConfigError, match="lr_schedule"):
    config.update(lr_schedule="linear")
    step_lib.learning_rate_schedule(config)
