"""A train step sharded over 4 (host) devices equals the same step on 1 device (implicit and BN CNN)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import importlib, sys
    import jax, numpy as np
    from jaxsr.models import build_model
    from jaxsr.train import step as step_lib

    assert jax.device_count() == 4, jax.devices()
    config = importlib.import_module("configs." + sys.argv[1]).get_config("smoke")
    config.batch_size = 4
    model = build_model(config.model)
    rng = np.random.default_rng(0)
    size = 2 * config.data.lr_patch_size + 2
    batch = {"hr": rng.random((4, size, size, size), dtype=np.float32),
             "t1": rng.random((4, size, size, size), dtype=np.float32)}
    step_fn = step_lib.make_train_step(config)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = step_lib.make_mesh(devices)
      state = step_lib.replicate(
          step_lib.create_train_state(model, config, jax.random.PRNGKey(1)), mesh)
      train_step = step_lib.compile_train_step(step_fn, mesh)
      sharded = step_lib.shard_batch(batch, mesh)
      assert len(sharded["hr"].sharding.device_set) == len(devices)
      for i in range(2):
        state, metrics = train_step(state, sharded, jax.random.PRNGKey(i))
      stats = getattr(state, "batch_stats", {})
      results.append((jax.device_get((state.params, stats)), jax.device_get(metrics)))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    flat1, flat4 = jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)
    for a, b in zip(flat1, flat4):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("OK", float(m1["loss"]), float(m4["loss"]))
""")


@pytest.mark.parametrize("config_module", ["csr_dmri", "dcsrn"])
def test_sharded_step_equals_single_device_step(config_module):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  result = subprocess.run([sys.executable, "-c", SCRIPT, config_module], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("OK")
