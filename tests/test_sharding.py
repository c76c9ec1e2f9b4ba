"""Train steps sharded over 4 (host) devices equal the same steps on 1 device.

dMRI: the implicit model and the BatchNorm CNN; MRSI: the GAN step (critic scan and
generator update, per-sample conditions and λ).
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import importlib, sys
    import jax, numpy as np
    from jaxsr.dmri import step as step_lib
    from jaxsr.dmri.models import build_model
    from jaxsr.train import sharding

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
      mesh = sharding.make_mesh(devices)
      state = sharding.replicate(
          step_lib.create_train_state(model, config, jax.random.key(1, impl="rbg")), mesh)
      train_step = sharding.compile_train_step(step_fn, mesh)
      sharded = sharding.shard_batch(batch, mesh)
      assert len(sharded["hr"].sharding.device_set) == len(devices)
      for i in range(2):
        state, metrics = train_step(state, sharded, jax.random.key(i, impl="rbg"))
      stats = getattr(state, "batch_stats", {})
      results.append((jax.device_get((state.params, stats)), jax.device_get(metrics)))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    flat1, flat4 = jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)
    for a, b in zip(flat1, flat4):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("OK", float(m1["loss"]), float(m4["loss"]))
""")


MRSI_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jaxsr.mrsi.critic import Critic
    from jaxsr.mrsi.step import create_gan_state, make_mrsi_train_step
    from jaxsr.mrsi.unet import MRSIUNet
    from jaxsr.train import sharding

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    batch = {k: rng.random((4, 16, 16), dtype=np.float32) for k in ("hr", "t1", "flair")}
    batch["mask"] = (rng.random((4, 16, 16)) > 0.1).astype(np.float32)
    batch["n"] = np.array([8, 10, 12, 16], np.int32)
    batch["metabolite"] = np.array([0, 2, 4, 6], np.int32)
    step_fn = make_mrsi_train_step(num_critic=2)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = sharding.make_mesh(devices)
      state = sharding.replicate(create_gan_state(
          MRSIUNet(channels=(4,)), Critic(channels=(4, 8), hidden=8), jax.random.key(1, impl="rbg"),
          (16, 16), learning_rate=1e-3), mesh)
      train_step = sharding.compile_train_step(step_fn, mesh)
      sharded = sharding.shard_batch(batch, mesh)
      assert len(sharded["hr"].sharding.device_set) == len(devices)
      for i in range(2):
        state, metrics = train_step(state, sharded, jax.random.key(i, impl="rbg"))
      results.append((jax.device_get(state), jax.device_get(metrics)))
    (s1, m1), (s4, m4) = results
    for key in ("loss", "l1", "ms_ssim", "adversarial", "grad_norm", "critic_loss",
                "wasserstein", "gradient_penalty"):
      np.testing.assert_allclose(m1[key], m4[key], rtol=1e-4, atol=1e-6)
    # Adam's first steps move every parameter by about the learning rate whatever the size of
    # its gradient, so entries whose gradient is at rounding level (zero-initialised condition
    # MLP outputs) may step either way depending on the reduction order; all others agree.
    a = np.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(
        (s1.generator.params, s1.critic.params))])
    b = np.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(
        (s4.generator.params, s4.critic.params))])
    assert np.mean(np.isclose(a, b, rtol=1e-3, atol=1e-5)) > 0.99
    assert np.abs(a - b).max() <= 2 * 2 * 1e-3 * 1.01  # two Adam steps of at most ~lr each
    print("OK", float(m1["loss"]), float(m4["loss"]))
""")


def run_on_four_host_devices(script: str, *args: str) -> None:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  result = subprocess.run([sys.executable, "-c", script, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("OK")


@pytest.mark.parametrize("config_module", ["csr_dmri", "dcsrn"])
def test_sharded_step_equals_single_device_step(config_module):
  run_on_four_host_devices(SCRIPT, config_module)


def test_sharded_mrsi_gan_step_equals_single_device_step():
  run_on_four_host_devices(MRSI_SCRIPT)
