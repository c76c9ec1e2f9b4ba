"""Conditioned convolutions, conditional instance norm and the multi-encoder MRSI UNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import kspace
from jaxsr.mrsi.unet import (CONDITIONINGS, ConditionalInstanceNorm, ConditionedConv, ConditionMLP,
                             MRSIUNet, conv_per_sample)


def plain_conv(x, kernel, bias):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def perturb(params, name, seed=0):
  """`params` with every leaf under the submodule `name` drawn at random (N(0, 0.3))."""
  rng = np.random.default_rng(seed)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  leaves = [jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype)
            if any(getattr(k, "key", None) == name for k in path) else v for path, v in flat]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 4)), jnp.float32)
  condition = jnp.asarray([[0.5], [0.75], [1.0]], jnp.float32)
  return x, condition


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_per_sample_convolution_equals_lax_convolution_in_values_and_gradients(kernel_size):
  rng = np.random.default_rng(kernel_size)
  x = jnp.asarray(rng.normal(size=(3, 9, 7, 4)), jnp.float32)
  kernels = jnp.asarray(rng.normal(size=(3, kernel_size, kernel_size, 4, 5)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 9, 7, 5)), jnp.float32)

  def reference(x, kernels, bias):
    return jnp.stack([plain_conv(x[i:i + 1], kernels[i], bias[i])[0] for i in range(3)])

  np.testing.assert_allclose(conv_per_sample(x, kernels, bias), reference(x, kernels, bias),
                             rtol=1e-5, atol=1e-4)
  loss = lambda f: lambda *args: jnp.sum(f(*args) * weights)
  grads = jax.grad(loss(conv_per_sample), argnums=(0, 1, 2))(x, kernels, bias)
  expected = jax.grad(loss(reference), argnums=(0, 1, 2))(x, kernels, bias)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_filter_scaling_starts_as_the_plain_convolution(batch):
  x, condition = batch
  layer = ConditionedConv(5, "filter_scaling")
  params = layer.init(jax.random.key(0, impl="rbg"), x, condition)["params"]
  np.testing.assert_allclose(layer.apply({"params": params}, x, condition),
                             plain_conv(x, params["kernel"], params["bias"]), atol=1e-5)


@pytest.mark.parametrize("conditioning", ["filter_scaling", "amlayer", "hypernetwork"])
def test_each_sample_uses_its_own_condition(batch, conditioning):
  x, condition = batch
  layer = ConditionedConv(5, conditioning)
  params = layer.init(jax.random.key(0, impl="rbg"), x, condition)["params"]
  mlp = {"filter_scaling": "scale", "amlayer": "modulation", "hypernetwork": "hyper"}[conditioning]
  params = perturb(params, mlp)
  together = layer.apply({"params": params}, x, condition)
  alone = [layer.apply({"params": params}, x[i:i + 1], condition[i:i + 1])[0] for i in range(3)]
  np.testing.assert_allclose(together, np.stack(alone), rtol=1e-5, atol=1e-5)
  # The same image under two conditions gives two outputs: the condition matters.
  same = jnp.broadcast_to(x[:1], x.shape)
  out = layer.apply({"params": params}, same, condition)
  assert np.abs(np.asarray(out[0] - out[2])).max() > 1e-2


def test_filter_scaling_scales_each_filter(batch):
  """With the scale MLP's output fixed to S, the kernel used is kernel * S per (in, out) pair."""
  x, condition = batch
  layer = ConditionedConv(5, "filter_scaling")
  params = layer.init(jax.random.key(0, impl="rbg"), x, condition)["params"]
  scales = np.random.default_rng(1).uniform(0.5, 1.5, (4, 5)).astype(np.float32)
  params["scale"]["out"]["bias"] = jnp.asarray(scales.ravel())
  expected = plain_conv(x, params["kernel"] * scales, params["bias"])
  np.testing.assert_allclose(layer.apply({"params": params}, x, condition), expected, atol=1e-5)


def test_conditional_instance_norm(batch):
  x, _ = batch
  lam = jnp.asarray([[0.0], [0.5], [1.0]])
  norm = ConditionalInstanceNorm()
  params = norm.init(jax.random.key(0, impl="rbg"), x, lam)["params"]
  y = np.asarray(norm.apply({"params": params}, x, lam))
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-5)  # starts as instance norm
  np.testing.assert_allclose(y.std(axis=(1, 2)), 1.0, rtol=1e-3)
  # Scale and shift are what the MLP of λ says, per sample and channel.
  params = perturb(params, "style", seed=2)
  y = np.asarray(norm.apply({"params": params}, x, lam))
  style = ConditionMLP(5, 64, 8).apply({"params": params["style"]}, lam)
  np.testing.assert_allclose(y.mean(axis=(1, 2)), style[:, 4:], atol=1e-4)
  np.testing.assert_allclose(y.std(axis=(1, 2)), np.abs(style[:, :4]), rtol=1e-3, atol=1e-4)


TINY_CHANNELS = (4, 8)


@pytest.fixture(scope="module")
def maps():
  rng = np.random.default_rng(3)
  truth = jnp.asarray(rng.random((2, 16, 16)), jnp.float32)
  n = jnp.asarray([8, 12])
  lr = kspace.truncate(truth, n)
  t1, flair = (jnp.asarray(rng.random((2, 16, 16)), jnp.float32) for _ in range(2))
  return lr, t1, flair, n, jnp.asarray([2, 5]), jnp.asarray([0.0, 0.06])


def test_unet_output_is_consistent_with_the_measured_k_space_and_masked(maps):
  lr, t1, flair, n, metabolite, lam = maps
  model = MRSIUNet(channels=TINY_CHANNELS)
  params = model.init(jax.random.key(0, impl="rbg"), lr, t1, flair, n, metabolite, lam)["params"]
  params = perturb(params, "head", seed=4)  # a residual that is not zero
  out = model.apply({"params": params}, lr, t1, flair, n, metabolite, lam)
  assert out.shape == (2, 16, 16) and out.dtype == jnp.float32
  assert np.abs(np.asarray(out - lr)).max() > 1e-3
  np.testing.assert_allclose(kspace.truncate(out, n), lr, atol=1e-5)  # each with its own n
  mask = jnp.asarray(np.random.default_rng(5).random((2, 16, 16)) > 0.2)
  masked = model.apply({"params": params}, lr, t1, flair, n, metabolite, lam, mask)
  np.testing.assert_array_equal(np.asarray(masked)[~np.asarray(mask)], 0.0)


def test_unet_starts_as_zero_filling_and_separates_conditioned_from_measured_n(maps):
  lr, t1, flair, n, metabolite, lam = maps
  model = MRSIUNet(channels=TINY_CHANNELS, conditioning="filter_scaling")
  params = model.init(jax.random.key(0, impl="rbg"), lr, t1, flair, n, metabolite, lam)["params"]
  np.testing.assert_allclose(model.apply({"params": params}, lr, t1, flair, n, metabolite, lam),
                             lr, atol=1e-5)  # zero head: the zero-filled input
  params = perturb(perturb(params, "head", seed=4), "scale", seed=6)
  apply = lambda **kw: model.apply({"params": params}, lr, t1, flair, n, metabolite, lam, **kw)
  np.testing.assert_allclose(apply(n_condition=n), apply(), atol=1e-6)
  other = apply(n_condition=jnp.asarray([16, 16]))
  assert np.abs(np.asarray(other - apply())).max() > 1e-3  # the condition reaches the filters
  np.testing.assert_allclose(kspace.truncate(other, n), lr, atol=1e-5)  # consistent with n


def test_unet_parameter_counts_order_as_the_conditionings_grow(maps):
  lr, t1, flair, n, metabolite, lam = maps
  counts = {}
  for conditioning in CONDITIONINGS:
    model = MRSIUNet(channels=TINY_CHANNELS, conditioning=conditioning)
    params = jax.eval_shape(model.init, jax.random.key(0, impl="rbg"), lr, t1, flair, n, metabolite,
                            lam)["params"]
    counts[conditioning] = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  assert (counts["none"] < counts["amlayer"] < counts["filter_scaling"]
          < counts["filter_scaling_met"]), counts
  assert counts["hypernetwork"] > counts["filter_scaling"], counts
  with pytest.raises(ValueError, match="conditioning must be one of"):
    MRSIUNet(channels=TINY_CHANNELS, conditioning="film").init(
        jax.random.key(0, impl="rbg"), lr, t1, flair, n, metabolite, lam)


def test_condition_mlp_sizes_are_the_papers_unless_set(maps):
  """() gives c(n, E(m)) 7 × 64 and s(λ) 5 × 64 (c(n) 5 × 32 without the metabolite); a
  (depth, width) replaces every condition MLP's."""
  def mlp_shapes(**kwargs):
    model = MRSIUNet(channels=(4,), **kwargs)
    params = jax.eval_shape(model.init, jax.random.key(0, impl="rbg"), *maps)["params"]
    mcm = params["t1_0_0"]
    conv, norm = mcm["ConditionedConv_0"]["scale"], mcm["ConditionalInstanceNorm_0"]["style"]
    return [(len(m), m["hidden_0"]["kernel"].shape[1]) for m in (conv, norm)]

  assert mlp_shapes() == [(7, 64), (5, 64)]
  assert mlp_shapes(conditioning="filter_scaling") == [(5, 32), (5, 64)]
  assert mlp_shapes(condition_mlp=(2, 16)) == [(2, 16), (2, 16)]
