import jax
import numpy as np

from configs.csr_dmri import get_config
from jaxsr.inference import reconstruct
from jaxsr.models import build_model, init_params
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
