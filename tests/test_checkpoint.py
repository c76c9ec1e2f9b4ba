"""Checkpointer: restored = saved for the state, the typed PRNG key and the data position."""

import json

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsr.train.checkpoint import Checkpointer


def data_iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4))


@pytest.mark.parametrize("impl", ["rbg", "threefry2x32"])
def test_restored_state_key_and_data_position_equal_the_saved_ones(tmp_path, impl):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(7)}
  rng = jax.random.fold_in(jax.random.key(5, impl=impl), 11)
  iterator = data_iterator()
  next(iterator), next(iterator)
  checkpointer = Checkpointer(tmp_path)
  checkpointer.save(2, state, rng, iterator, ml_collections.ConfigDict({"seed": 5}), force=True)
  checkpointer.wait()
  expected_next = next(iterator)

  fresh = data_iterator()
  assert checkpointer.rng_impl(2) == impl
  zeros = jax.tree.map(jnp.zeros_like, state)
  other_key = jax.random.key(0, impl=impl)
  restored, restored_rng = checkpointer.restore(2, zeros, other_key, fresh)
  checkpointer.close()
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert int(restored["step"]) == 7
  assert str(jax.random.key_impl(restored_rng)) == impl
  np.testing.assert_array_equal(jax.random.key_data(restored_rng), jax.random.key_data(rng))
  np.testing.assert_array_equal(jax.random.uniform(restored_rng, (3,)),
                                jax.random.uniform(rng, (3,)))  # draws the same numbers
  np.testing.assert_array_equal(next(fresh), expected_next)


def test_format_1_checkpoints_are_read_as_threefry_keys(tmp_path):
  """Checkpoints written before `meta.rng_impl` existed hold raw threefry key data."""
  state = {"w": jnp.ones(3)}
  rng = jax.random.key(1, impl="threefry2x32")
  checkpointer = Checkpointer(tmp_path)
  checkpointer.save(1, state, rng, data_iterator(), ml_collections.ConfigDict(), force=True)
  checkpointer.wait()
  meta = tmp_path / "checkpoints" / "1" / "meta" / "metadata"
  meta.write_text(json.dumps({"format": 1, "jaxsr_version": "0.1.0"}))
  assert checkpointer.rng_impl(1) == "threefry2x32"
  abstract_key = jax.eval_shape(lambda: jax.random.key(0, impl=checkpointer.rng_impl(1)))
  _, restored_rng = checkpointer.restore(1, state, abstract_key)
  checkpointer.close()
  np.testing.assert_array_equal(jax.random.key_data(restored_rng), jax.random.key_data(rng))


def test_the_best_validation_checkpoint_is_kept_beside_the_latest(tmp_path):
  checkpointer = Checkpointer(tmp_path, max_to_keep=1, keep_best=True)
  rng, iterator = jax.random.key(0), data_iterator()
  scores = {1: 20.0, 2: 23.0, 3: 22.0, 4: 21.0}
  for step, score in scores.items():
    checkpointer.save(step, {"w": jnp.full(2, float(step))}, rng, iterator,
                      ml_collections.ConfigDict(), force=True, metrics={"val_psnr": score})
    checkpointer.wait()
  assert sorted(checkpointer.manager.all_steps()) == [2, 4]  # best and latest, no others
  assert checkpointer.best_step() == 2 and checkpointer.latest_step() == 4
  restored, _ = checkpointer.restore(2, {"w": jnp.zeros(2)}, rng)
  checkpointer.close()
  np.testing.assert_array_equal(restored["w"], [2.0, 2.0])
  assert Checkpointer(tmp_path, read_only=True).best_step() == 2  # as evaluation reads it


def test_without_validation_scores_only_the_latest_are_kept_and_there_is_no_best(tmp_path):
  checkpointer = Checkpointer(tmp_path, max_to_keep=2)
  for step in range(1, 5):
    checkpointer.save(step, {"w": jnp.ones(2)}, jax.random.key(0), data_iterator(),
                      ml_collections.ConfigDict(), force=True)
    checkpointer.wait()
  assert sorted(checkpointer.manager.all_steps()) == [3, 4]
  assert checkpointer.best_step() is None
  checkpointer.close()
