"""RDN3D, ImplicitMLP and CSRdMRI: shapes, parameter counts, decoding semantics, dtypes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsr.dmri.models import RDN3D, CSRdMRI, ImplicitMLP, build_model, init_params
from jaxsr.dmri.models.mlp import chunk_layout
from jaxsr.dmri.models.sampling import grid_coordinates

TINY = dict(num_features=4, growth=3, num_blocks=2, num_layers=2, latent_features=5,
            mlp_depth=3, mlp_width=8, mlp_skip_after=1)


def count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def abstract_params(module, *inputs):
  """Parameter shapes and dtypes without running the initialiser."""
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]


def random_params(module, *inputs, seed=0):
  """LeCun-normal parameters drawn with numpy: XLA compiles threefry slowly on CPU."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1])),
                            jnp.float32),
      abstract_params(module, *inputs))


def rdn_param_count(c_in, g0, g, d, c, out):
  conv3 = lambda i, o: 27 * i * o + o
  conv1 = lambda i, o: i * o + o
  block = sum(conv3(g0 + k * g, g) for k in range(c)) + conv1(g0 + c * g, g0)
  return (conv3(c_in, g0) + conv3(g0, g0)  # SFE1, SFE2
          + d * block
          + conv1(d * g0, g0) + conv3(g0, g0)  # global feature fusion
          + conv3(g0, out))  # output conv


def mlp_param_count(d_in, depth, width, skip_after):
  dense = lambda i, o: i * o + o
  first = dense(d_in, width)
  after_skip = dense(width + d_in, width)
  return first + after_skip + (depth - 2) * dense(width, width) + dense(width, 1)


def test_default_rdn_parameter_count():
  params = abstract_params(RDN3D(), jnp.zeros((1, 4, 4, 4, 2)))
  expected = rdn_param_count(2, 64, 64, 8, 3, 128)
  assert count(params) == expected == 5_920_512


def test_default_mlp_parameter_count_and_skip():
  params = abstract_params(ImplicitMLP(), jnp.zeros((1, 131)))
  assert count(params) == mlp_param_count(131, 8, 256, 4) == 528_129
  # The input (131) is concatenated after the 4th ReLU, i.e. enters the 5th layer.
  assert params["hidden_4"]["kernel"].shape == (256 + 131, 256)
  assert params["hidden_3"]["kernel"].shape == (256, 256)


def test_default_csr_dmri_parameter_count():
  """The MLP sees the periodic position (sin, cos per axis: 6 inputs) and 128 features."""
  params = abstract_params(CSRdMRI(), jnp.zeros((1, 4, 4, 4, 2)), jnp.zeros((1, 1, 3)))
  assert count(params) == rdn_param_count(2, 64, 64, 8, 3, 128) + mlp_param_count(134, 8, 256, 4)
  assert count(params) == 6_450_177


@pytest.mark.parametrize("skip_after", [0, 3])
def test_mlp_rejects_bad_skip(skip_after):
  with pytest.raises(ValueError, match="skip_after"):
    abstract_params(ImplicitMLP(depth=3, width=4, skip_after=skip_after), jnp.zeros((2, 5)))


def test_mlp_skip_is_a_concatenation_of_the_input():
  """With the pre-skip layers zeroed, the output is a function of the input only through the skip."""
  mlp = ImplicitMLP(depth=3, width=4, skip_after=1)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
  params = random_params(mlp, x)
  params["hidden_0"] = jax.tree_util.tree_map(jnp.zeros_like, params["hidden_0"])
  kernel, bias = params["hidden_1"]["kernel"], params["hidden_1"]["bias"]
  h = jax.nn.relu(x @ kernel[4:] + bias)  # rows 0..3 see the zero ReLU outputs
  h = jax.nn.relu(h @ params["hidden_2"]["kernel"] + params["hidden_2"]["bias"])
  expected = h @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(mlp.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, chunk_rows, expected", [
    (32000, 4000, (8, 4000)), (55296, 4000, (14, 3950)), (60, 7, (9, 7)), (5, 0, (1, 5)),
    (3, 4, (1, 3))])
def test_chunk_layout_covers_the_rows_with_less_than_a_row_per_chunk_of_padding(
    rows, chunk_rows, expected):
  chunks, chunk = chunk_layout(rows, chunk_rows)
  assert (chunks, chunk) == expected
  assert 0 <= chunks * chunk - rows < chunks


def test_chunked_mlp_equals_the_whole_mlp_in_values_and_gradients():
  """60 queries in 9 chunks of 7 (3 padded rows): the same outputs and gradients."""
  whole = ImplicitMLP(depth=3, width=8, skip_after=1)
  chunked = ImplicitMLP(depth=3, width=8, skip_after=1, chunk_rows=7)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 6, 5)), jnp.float32)
  params = random_params(whole, x)
  assert jax.tree_util.tree_structure(abstract_params(chunked, x)) == \
      jax.tree_util.tree_structure(params)
  np.testing.assert_allclose(chunked.apply({"params": params}, x),
                             whole.apply({"params": params}, x), rtol=1e-6, atol=1e-6)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 1)), jnp.float32)

  def loss(mlp):
    return lambda p, x: jnp.sum(weights * mlp.apply({"params": p}, x))

  expected = jax.grad(loss(whole), argnums=(0, 1))(params, x)
  got = jax.grad(loss(chunked), argnums=(0, 1))(params, x)
  for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_chunked_mlp_maps_over_chunks_and_recomputes_them_in_the_backward_pass():
  """The structure that makes it fast: a loop over chunks, each chunk a rematerialised call."""
  mlp = ImplicitMLP(depth=3, width=8, skip_after=1, chunk_rows=7)
  x = jnp.zeros((60, 5), jnp.float32)
  params = abstract_params(mlp, x)
  jaxpr = str(jax.make_jaxpr(lambda p: mlp.apply({"params": p}, x))(params))
  assert "scan[" in jaxpr and "length=9" in jaxpr
  assert "checkpoint[" in jaxpr or "remat" in jaxpr
  whole = str(jax.make_jaxpr(lambda p: ImplicitMLP(depth=3, width=8, skip_after=1).apply(
      {"params": p}, x))(params))
  assert "scan[" not in whole


def test_rdn_keeps_spatial_size():
  rdn = RDN3D(num_features=4, growth=3, num_blocks=2, num_layers=2, out_features=5)
  x = jnp.ones((2, 3, 4, 5, 1))
  out, _ = jax.eval_shape(rdn.init_with_output, jax.random.PRNGKey(0), x)
  assert out.shape == (2, 3, 4, 5, 5)


@pytest.fixture(scope="module")
def tiny():
  """A tiny 2-channel CSRdMRI, its params and an input batch."""
  model = CSRdMRI(**TINY)
  rng = np.random.default_rng(0)
  lr = jnp.asarray(rng.normal(size=(2, 4, 5, 3, 2)), jnp.float32)
  coords = jnp.asarray(rng.uniform(-1, 1, (2, 7, 3)), jnp.float32)
  # An rbg key: the same init, but compiles in seconds rather than tens on CPU.
  params = init_params(model, jax.random.key(0, impl="rbg"), in_channels=2, lr_shape=(4, 5, 3))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  return model, params, lr, coords


def test_shapes_and_call_is_decode_of_encode(tiny):
  model, params, lr, coords = tiny
  apply = jax.jit(model.apply, static_argnames="method")
  latent = apply({"params": params}, lr, method=model.encode)
  assert latent.shape == (2, 4, 5, 3, 5)
  out = apply({"params": params}, lr, coords)
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  decoded = apply({"params": params}, latent, coords, method=model.decode)
  np.testing.assert_allclose(out, decoded, rtol=1e-6)


def test_grid_reconstruction_equals_decoding_every_voxel_centre(tiny):
  """The train step's `decode_grid` (no gathers) = `decode` at the HR centres, with gradients."""
  model, params, lr, _ = tiny
  hr_shape = (9, 10, 7)
  latent = model.apply({"params": params}, lr, method="encode")
  coords = jnp.broadcast_to(grid_coordinates(hr_shape).reshape(1, -1, 3), (2, 630, 3))
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, *hr_shape)), jnp.float32)

  def grid(p, latent):
    return model.apply({"params": p}, latent, hr_shape, method="decode_grid")

  def gathered(p, latent):
    return model.apply({"params": p}, latent, coords, method="decode").reshape(2, *hr_shape)

  np.testing.assert_allclose(grid(params, latent), gathered(params, latent), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.apply({"params": params}, lr, hr_shape, method="reconstruct_grid"),
                             grid(params, latent), rtol=1e-6)
  grads = [jax.grad(lambda p, l: jnp.sum(weights * f(p, l)), argnums=(0, 1))(params, latent)
           for f in (grid, gathered)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), *grads)


@pytest.mark.parametrize("coordinates", ["periodic", "local", "global"])
def test_decode_at_lr_voxel_centres_is_the_mlp_of_position_and_latent(coordinates):
  model = CSRdMRI(**TINY, coordinates=coordinates)
  latent = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 5, 3, 5)), jnp.float32)
  coords = grid_coordinates((4, 5, 3)).reshape(1, -1, 3)
  params = random_params(model, jnp.zeros((1, 4, 5, 3, 2)), coords)
  decoded = jax.jit(model.apply, static_argnames="method")(
      {"params": params}, latent, coords, method=model.decode)
  mlp = ImplicitMLP(TINY["mlp_depth"], TINY["mlp_width"], TINY["mlp_skip_after"])
  at_centre = {"periodic": jnp.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),  # sin 0, cos 0
               "local": jnp.zeros(3), "global": None}[coordinates]
  position = coords if at_centre is None else jnp.broadcast_to(at_centre, coords.shape[:2] + at_centre.shape)
  inputs = jnp.concatenate([position, latent.reshape(1, -1, 5)], axis=-1)
  expected = mlp.apply({"params": params["mlp"]}, inputs)[..., 0]
  np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-5)


def test_periodic_position_is_continuous_across_lr_voxel_faces():
  """Just either side of the face between two LR voxels, the local offset jumps from +1 to -1;
  the periodic input (and so the decoded value) does not."""
  latent = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 5, 3, 5)), jnp.float32)
  face = 2 * 2 / 4 - 1  # between voxels 1 and 2 of a 4-voxel axis
  coords = jnp.array([[[face - 1e-4, 0.1, -0.2], [face + 1e-4, 0.1, -0.2]]])
  jumps = {}
  for coordinates in ("periodic", "local"):
    model = CSRdMRI(**TINY, coordinates=coordinates)
    params = random_params(model, jnp.zeros((1, 4, 5, 3, 2)), coords)
    values = model.apply({"params": params}, latent, coords, method=model.decode)[0]
    jumps[coordinates] = abs(float(values[1] - values[0]))
  assert jumps["periodic"] < 1e-3 < jumps["local"], jumps


def test_residual_model_predicts_the_difference_from_trilinear_interpolation_of_the_dwi():
  """With `predict_residual` and a zero MLP head, decoding is the trilinear interpolation of the
  LR DWI channel (exact for a linear ramp); a non-zero head adds the MLP's output to it; the
  latent map carries the DWI as an extra channel, so grid decoding still equals point decoding."""
  model = CSRdMRI(**TINY, predict_residual=True)
  lr_shape = (4, 5, 3)
  centres = grid_coordinates(lr_shape)  # (4, 5, 3, 3) in [-1, 1]
  ramp = 0.3 + centres @ jnp.array([0.5, -0.25, 0.125])  # linear in the coordinates
  rng = np.random.default_rng(3)
  lr = jnp.stack([ramp, jnp.asarray(rng.normal(size=lr_shape), jnp.float32)], -1)[None]
  # Inside the outermost LR voxel centres, where trilinear interpolation of a ramp is exact.
  coords = jnp.asarray(rng.uniform(-0.6, 0.6, (1, 50, 3)) * np.array([1.0, 1.0, 0.4]), jnp.float32)
  params = random_params(model, lr, coords)
  assert params["mlp"]["hidden_0"]["kernel"].shape[0] == 6 + TINY["latent_features"] + 1
  latent = model.apply({"params": params}, lr, method="encode")
  assert latent.shape == (1, *lr_shape, TINY["latent_features"] + 1)
  np.testing.assert_array_equal(latent[..., -1], lr[..., 0])
  silent = jax.tree.map(jnp.zeros_like, params["mlp"]["head"])
  silent_params = {**params, "mlp": {**params["mlp"], "head": silent}}
  out = model.apply({"params": silent_params}, lr, coords)
  expected = 0.3 + coords[0] @ jnp.array([0.5, -0.25, 0.125])
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
  plain = CSRdMRI(**TINY, predict_residual=False)
  mlp_only = plain.apply({"params": params}, latent, coords, method="decode")
  np.testing.assert_allclose(model.apply({"params": params}, lr, coords),
                             mlp_only + expected[None], rtol=1e-5, atol=1e-5)
  hr_shape = (8, 10, 6)
  grid = model.apply({"params": params}, lr, hr_shape, method="reconstruct_grid")
  points = model.apply({"params": params}, lr, grid_coordinates(hr_shape).reshape(1, -1, 3))
  np.testing.assert_allclose(grid.reshape(1, -1), points, rtol=1e-5, atol=1e-5)


def test_single_channel_input():
  model = CSRdMRI(**TINY)
  params = random_params(model, jnp.ones((1, 3, 3, 3, 1)), jnp.zeros((1, 1, 3)))
  assert params["encoder"]["sfe1"]["kernel"].shape == (3, 3, 3, 1, 4)
  out = jax.jit(model.apply)({"params": params}, jnp.ones((1, 6, 4, 5, 1)), jnp.zeros((1, 9, 3)))
  assert out.shape == (1, 9) and np.isfinite(out).all()


def test_bfloat16_computation_is_close_to_float32(tiny):
  _, params, lr, coords = tiny
  model16 = CSRdMRI(**TINY, dtype=jnp.bfloat16)
  params16 = abstract_params(model16, lr, coords)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params16))
  out32 = jax.jit(CSRdMRI(**TINY).apply)({"params": params}, lr, coords)
  out16 = jax.jit(model16.apply)({"params": params}, lr, coords)
  assert out16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(out32)))
  np.testing.assert_allclose(out16, out32, atol=0.05 * scale + 1e-3)
  assert not np.array_equal(out16, out32)  # really computed in bfloat16


def test_build_model_from_config():
  config = ml_collections.ConfigDict(dict(TINY, kind="csr_dmri", in_channels=2, dtype="bfloat16",
                                           coordinates="global"))
  model = build_model(config)
  assert model == CSRdMRI(**TINY, coordinates="global", dtype=jnp.bfloat16)
  config.dtype = "float16"
  with pytest.raises(ValueError, match="dtype"):
    build_model(config)
