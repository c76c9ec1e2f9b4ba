"""DCSRN and ResCNN3D: shapes, parameter counts, global residual, BatchNorm modes, grads, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.dmri.models import DCSRN, ResCNN3D

TINY_DCSRN = dict(growth=3, num_units=2)
TINY_RESCNN = dict(num_features=4, num_layers=3)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_variables(module, *inputs, **kwargs):
  """Variable shapes and dtypes without running the initialiser; `kwargs` are static (train)."""
  return jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.PRNGKey(0), *inputs)


def random_variables(module, *inputs, seed=0, **kwargs):
  """LeCun-normal params drawn with numpy (threefry compiles slowly on CPU), fresh batch stats."""
  rng = np.random.default_rng(seed)
  abstract = abstract_variables(module, *inputs, **kwargs)
  variables = {"params": jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1])),
                            jnp.float32),
      abstract["params"])}
  if "batch_stats" in abstract:
    variables["batch_stats"] = {
        name: {"mean": jnp.zeros(s["mean"].shape), "var": jnp.ones(s["var"].shape)}
        for name, s in abstract["batch_stats"].items()}
  return variables


def volume(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def conv3(c_in, c_out):
  return 27 * c_in * c_out + c_out


def dcsrn_param_count(k, units):
  bn = lambda c: 2 * c  # scale and bias
  unit = lambda i: bn(2 * k + i * k) + conv3(2 * k + i * k, k)
  return conv3(1, 2 * k) + sum(unit(i) for i in range(units)) + conv3(2 * k + units * k, 1)


def rescnn_param_count(f, layers):
  return conv3(1, f) + (layers - 2) * conv3(f, f) + conv3(f, 1)


def test_default_dcsrn_parameter_count():
  variables = abstract_variables(DCSRN(), jnp.zeros((1, 4, 4, 4, 1)), train=False)
  assert count(variables["params"]) == dcsrn_param_count(24, 4) == 223_729
  assert count(variables["batch_stats"]) == 2 * sum(48 + 24 * i for i in range(4))  # mean, var
  assert variables["params"]["output"]["kernel"].shape == (3, 3, 3, 48 + 4 * 24, 1)


def test_default_rescnn_parameter_count():
  params = abstract_variables(ResCNN3D(), jnp.zeros((1, 4, 4, 4, 1)))["params"]
  assert count(params) == rescnn_param_count(64, 10) == 888_769
  assert sorted(params) == sorted([f"conv_{i}" for i in range(9)] + ["output"])


@pytest.mark.parametrize("train", [False, True])
def test_dcsrn_shape(train):
  init = functools.partial(DCSRN(**TINY_DCSRN).init_with_output, train=train,
                           mutable=["params", "batch_stats"])
  out, _ = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.ones((2, 8, 7, 6, 1)))
  assert out.shape == (2, 8, 7, 6, 1) and out.dtype == jnp.float32


def test_rescnn_shape():
  out, _ = jax.eval_shape(ResCNN3D(**TINY_RESCNN).init_with_output, jax.random.PRNGKey(0),
                          jnp.ones((2, 8, 7, 6, 1)))
  assert out.shape == (2, 8, 7, 6, 1) and out.dtype == jnp.float32


def test_rescnn_rejects_too_few_layers():
  with pytest.raises(ValueError, match="num_layers"):
    abstract_variables(ResCNN3D(num_features=4, num_layers=1), jnp.zeros((1, 4, 4, 4, 1)))


def test_rescnn_zero_output_conv_returns_the_input():
  model = ResCNN3D(**TINY_RESCNN)
  x = volume((2, 8, 8, 8, 1))
  variables = random_variables(model, x)
  variables["params"]["output"] = jax.tree_util.tree_map(jnp.zeros_like,
                                                         variables["params"]["output"])
  out = jax.jit(model.apply)(variables, x)
  np.testing.assert_array_equal(out, x)
  # With the random output conv the residual is non-zero.
  variables = random_variables(model, x)
  assert not np.allclose(jax.jit(model.apply)(variables, x), x)


def test_dcsrn_train_updates_running_statistics():
  model = DCSRN(**TINY_DCSRN)
  x = volume((2, 8, 8, 8, 1)) + 3.0
  variables = random_variables(model, x, train=False)
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                             capture_intermediates=lambda mdl, _: mdl.name == "input")
  assert out.shape == x.shape
  # bn_0 normalises the input conv's output: momentum 0.9 from the initial mean 0 and var 1.
  h = updates["intermediates"]["input"]["__call__"][0]
  batch_mean, batch_var = jnp.mean(h, axis=(0, 1, 2, 3)), jnp.var(h, axis=(0, 1, 2, 3))
  stats = updates["batch_stats"]["bn_0"]
  np.testing.assert_allclose(stats["mean"], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * batch_var, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(stats["mean"] - batch_mean) < np.abs(batch_mean))  # moved toward it
  for name in variables["batch_stats"]:
    assert not np.allclose(updates["batch_stats"][name]["mean"], 0.0)


def test_dcsrn_eval_is_per_example():
  model = DCSRN(**TINY_DCSRN)
  x = volume((2, 8, 8, 8, 1))
  variables = random_variables(model, x, train=False)
  variables["batch_stats"] = jax.tree_util.tree_map(
      lambda s: s + 0.5, variables["batch_stats"])  # non-trivial running averages
  apply = jax.jit(model.apply, static_argnames="train")
  alone = apply(variables, x[:1], train=False)
  np.testing.assert_allclose(apply(variables, x, train=False)[:1], alone, rtol=1e-5, atol=1e-6)
  # In training mode the batch statistics couple the examples.
  alone_train, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])
  batch_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(batch_train[:1], alone_train, rtol=1e-3, atol=1e-4)


def test_jit_grad_is_finite():
  x = volume((2, 8, 8, 8, 1))
  y = volume((2, 8, 8, 8, 1), seed=2)

  dcsrn = DCSRN(**TINY_DCSRN)
  variables = random_variables(dcsrn, x, train=False)

  def dcsrn_loss(params):
    out, _ = dcsrn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return jnp.mean((out - y) ** 2)

  rescnn = ResCNN3D(**TINY_RESCNN)
  rescnn_params = random_variables(rescnn, x)["params"]
  rescnn_loss = lambda p: jnp.mean((rescnn.apply({"params": p}, x) - y) ** 2)

  for loss, params in [(dcsrn_loss, variables["params"]), (rescnn_loss, rescnn_params)]:
    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert len(leaves) == len(jax.tree_util.tree_leaves(params))
    assert all(np.isfinite(g).all() for g in leaves)
    assert any(np.abs(g).max() > 0 for g in leaves)


@pytest.mark.parametrize("model, kwargs", [
    (DCSRN(**TINY_DCSRN, dtype=jnp.bfloat16), {"train": False}),
    (ResCNN3D(**TINY_RESCNN, dtype=jnp.bfloat16), {}),
])
def test_bfloat16_keeps_float32_params(model, kwargs):
  x = volume((1, 8, 8, 8, 1))
  abstract = abstract_variables(model, x, **kwargs)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(abstract))
  variables = random_variables(model, x, **kwargs)
  out = jax.jit(functools.partial(model.apply, **kwargs))(variables, x)
  assert out.dtype == jnp.float32 and np.isfinite(out).all()
  out32 = jax.jit(functools.partial(model.clone(dtype=jnp.float32).apply, **kwargs))(variables, x)
  scale = float(jnp.max(jnp.abs(out32)))
  np.testing.assert_allclose(out, out32, atol=0.05 * scale + 1e-3)
  assert not np.array_equal(out, out32)  # really computed in bfloat16
