"""The CPU 3D-convolution forms equal lax.conv_general_dilated in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.dmri.models.conv import Conv3D, conv3d_same, forward_compiler_options, resolve_conv_impl
from jaxsr.dmri.models.rdn import RDN3D


def lax_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME",
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


@pytest.mark.parametrize("shape,k,c_out", [
    ((2, 5, 4, 6, 3), 3, 7), ((1, 3, 7, 2, 8), 3, 2), ((2, 6, 5, 4, 2), 5, 3),
    ((1, 4, 4, 4, 5), 1, 6),
    ((1, 1, 5, 4, 3), 3, 2), ((1, 2, 5, 4, 3), 5, 2)])  # taps beyond the depth
def test_2d_form_of_the_convolution_equals_lax_in_values_and_gradients(shape, k, c_out):
  impl = "depth_taps"
  rng = np.random.default_rng(k + c_out)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, k, shape[-1], c_out)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal(shape[:4] + (c_out,)), jnp.float32)

  def loss(conv):  # a weighted sum: every output voxel gets its own gradient
    return lambda x, kernel: jnp.sum(weights * jnp.tanh(conv(x, kernel)))

  expected = lax_conv(x, kernel)
  got = conv3d_same(x, kernel, impl)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
  grads = jax.grad(loss(lambda x, w: conv3d_same(x, w, impl)), argnums=(0, 1))(x, kernel)
  expected_grads = jax.grad(loss(lax_conv), argnums=(0, 1))(x, kernel)
  for g, e in zip(grads, expected_grads):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
  assert float(jnp.abs(grads[1]).max()) > 0.1


def test_rdn_gives_the_same_features_and_gradients_with_either_convolution():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 5, 4, 2)), jnp.float32)
  models = {impl: RDN3D(8, 4, 1, 2, 6, conv_impl=impl) for impl in ("xla", "depth_taps")}
  params = models["xla"].init(jax.random.key(0, impl="rbg"), x)
  # Same parameter tree as flax nn.Conv layers had (older checkpoints load).
  assert set(params["params"]["rdb_0"]) == {"Conv_0", "Conv_1", "local_fusion"}
  assert set(params["params"]["rdb_0"]["Conv_0"]) == {"kernel", "bias"}
  outputs = {i: m.apply(params, x) for i, m in models.items()}
  np.testing.assert_allclose(outputs["depth_taps"], outputs["xla"], rtol=1e-4, atol=1e-5)
  grads = {i: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params) for i, m in models.items()}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               grads["depth_taps"], grads["xla"])


def test_conv_module_computes_in_its_dtype_with_float32_parameters():
  x = jnp.ones((1, 3, 3, 3, 2))
  layer = Conv3D(4, 3, dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(0, impl="rbg"), x)["params"]
  assert params["kernel"].dtype == jnp.float32 and params["kernel"].shape == (3, 3, 3, 2, 4)
  assert layer.apply({"params": params}, x).dtype == jnp.bfloat16


def test_auto_picks_the_2d_form_on_cpu_and_bad_names_are_refused():
  assert resolve_conv_impl("auto") == ("depth_taps" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    resolve_conv_impl("cudnn")
  with pytest.raises(ValueError, match="odd cubic kernel"):
    conv3d_same(jnp.ones((1, 4, 4, 4, 1)), jnp.ones((2, 2, 2, 1, 1)))


def test_forward_programs_run_convolutions_with_xla_own_kernels_on_cpu():
  """Inference compiles with `forward_compiler_options`: on CPU, 2D convolutions leave
  YNNPACK (XLA's default there) for XLA's Eigen kernels, with the same values."""
  options = forward_compiler_options()
  if jax.default_backend() != "cpu":
    assert options == {}
    return
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((20, 24, 20, 64)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 64, 64)), jnp.float32)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  default = jax.jit(conv).lower(x, kernel).compile()
  forward = jax.jit(conv, compiler_options=options).lower(x, kernel).compile()
  assert "__ynn_fusion" in default.as_text() and "__ynn_fusion" not in forward.as_text()
  np.testing.assert_allclose(forward(x, kernel), default(x, kernel), rtol=1e-4, atol=1e-3)
