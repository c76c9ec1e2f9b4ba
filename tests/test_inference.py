import jax
import jax.numpy as jnp
import numpy as np

from configs.csr_dmri import get_config
from jaxsr.data.degrade import resize_spatial, tricubic_upsample
from jaxsr.inference import apply_fixed_scale, apply_tiled, reconstruct, reconstruct_fixed_scale
from jaxsr.models import DCSRN, ResCNN3D, build_model, init_params
from jaxsr.models.sampling import grid_coordinates


def test_chunked_reconstruction_equals_one_pass_and_ignores_chunk_size():
  config = get_config("smoke")
  model = build_model(config.model)
  params = init_params(model, jax.random.key(0, impl="rbg"), in_channels=2, lr_shape=(5, 6, 4))
  lr = np.random.default_rng(0).random((5, 6, 4, 2), dtype=np.float32)
  hr_shape = (11, 13, 9)  # non-integer scales, 1287 voxels: chunks do not divide it
  coords = grid_coordinates(hr_shape).reshape(1, -1, 3)
  full = np.asarray(model.apply({"params": params}, lr[None], coords))[0].reshape(hr_shape)
  for chunk_size in (100, 1287, 5000):
    out = reconstruct(model, params, lr, hr_shape, chunk_size=chunk_size)
    assert out.shape == hr_shape and out.dtype == np.float32
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6)


def _dcsrn_with_running_stats():
  """A tiny DCSRN whose BatchNorm running statistics are not the identity."""
  model = DCSRN(growth=3, num_units=2)
  variables = model.init(jax.random.key(1, impl="rbg"), jnp.zeros((1, 6, 6, 6, 1)), train=False)
  stats = jax.tree.map(lambda x: x + 0.3, variables["batch_stats"])
  return model, {"params": variables["params"], "batch_stats": stats}


def test_tiled_cnn_equals_one_whole_volume_pass():
  model, variables = _dcsrn_with_running_stats()
  volume = np.random.default_rng(0).random((23, 7, 6), dtype=np.float32)
  full = np.asarray(apply_fixed_scale(model, variables, jnp.asarray(volume)))
  for tile_voxels in (42, 5 * 42, 10_000):  # slabs of 1 and 5 voxels, then one slab
    out = apply_tiled(model, variables, volume, tile_voxels)
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6)
  # Without the receptive-radius overlap, slab borders would differ: the test can fail.
  no_overlap = np.concatenate([np.asarray(apply_fixed_scale(model, variables,
                                                            jnp.asarray(volume[i:i + 5])))
                               for i in range(0, 23, 5)])
  assert np.abs(no_overlap - full).max() > 1e-3


def test_fixed_scale_model_runs_at_its_training_scale_then_resamples():
  lr = np.random.default_rng(1).random((6, 5, 4), dtype=np.float32)
  identity = ResCNN3D(num_features=2, num_layers=2)
  params = identity.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 4, 4, 4, 1)))["params"]
  params = jax.tree.map(jnp.zeros_like, params)  # residual 0: the model returns its input
  variables = {"params": params}
  at_train_scale = reconstruct_fixed_scale(identity, variables, lr, (18, 15, 12), scale=3.0,
                                           train_scale=3.0)
  np.testing.assert_allclose(at_train_scale, tricubic_upsample(lr, (18, 15, 12)), atol=1e-6)
  # 2.4x with a 3x model: the 3x grid (18, 15, 12), then anti-aliased down to the 2.4x grid.
  hr_shape = (14, 12, 10)
  out = reconstruct_fixed_scale(identity, variables, lr, hr_shape, scale=2.4, train_scale=3.0)
  expected = resize_spatial(tricubic_upsample(lr, (18, 15, 12)), hr_shape, antialias=True)
  assert out.shape == hr_shape
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert np.abs(out - tricubic_upsample(lr, hr_shape)).max() > 1e-3
