import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.csr_dmri import get_config
from jaxsr.dmri.degradation.degrade import resize_spatial, tricubic_upsample
from jaxsr.dmri.inference.memory import (NATIVE_CONV_SLOWDOWN, MemoryBudgetError, MemoryPlan,
                                         plan_memory, tiling_work)
from jaxsr.dmri.models import DCSRN, ResCNN3D, build_model, init_params
from jaxsr.dmri.models.conv import resolve_conv_impl
from jaxsr.dmri.models.sampling import grid_coordinates
from jaxsr.dmri.inference.reconstruct import (apply_fixed_scale, apply_tiled, axis_tiles, encode,
                                              encode_tiled, reconstruct, reconstruct_fixed_scale)


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


def _tiny_implicit(in_channels=2):
  config = get_config("smoke")
  model = build_model(config.model)
  params = init_params(model, jax.random.key(0, impl="rbg"), in_channels=in_channels)
  return model, params


def test_receptive_radius_counts_the_encoder_convolutions():
  model, _ = _tiny_implicit()
  assert model.receptive_radius == 4 + 2 * 2  # smoke: 2 blocks of 2 layers
  assert build_model(get_config().model).receptive_radius == 4 + 8 * 3


def test_tiled_encoder_and_reconstruction_equal_one_pass():
  model, params = _tiny_implicit()
  lr = np.random.default_rng(0).random((19, 14, 11, 2), dtype=np.float32)
  whole = np.asarray(encode(model, params, jnp.asarray(lr)))
  for core in [(5, 4, 3), (19, 6, 11), (8, 14, 2)]:
    tiled = np.asarray(encode_tiled(model, params, lr, core))
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)
  # Tiles without the receptive-radius overlap would differ: the test can fail.
  halo_free = np.asarray(encode(model, params, jnp.asarray(lr[:5])))
  assert np.abs(halo_free[:5] - whole[:5]).max() > 1e-4
  hr_shape = (40, 30, 23)
  calls = []
  out = reconstruct(model, params, lr, hr_shape, chunk_size=5000, tile=(5, 4, 3),
                    progress=calls.append)
  np.testing.assert_allclose(out, reconstruct(model, params, lr, hr_shape), rtol=1e-5, atol=1e-6)
  native = reconstruct(model, params, lr, hr_shape, tile=(5, 4, 3), conv_impl="xla")
  np.testing.assert_allclose(native, out, rtol=1e-5, atol=1e-5)
  plan = MemoryPlan((5, 4, 3), 5000, 0, 0, 0, 0)
  assert len(calls) == plan.num_passes(lr.shape[:3], hr_shape) == 4 * 4 * 4 + 6


def test_axis_tiles_cover_the_axis_with_one_window_length():
  for size, core, halo in [(19, 5, 3), (7, 2, 10), (10, 10, 2), (1, 4, 2)]:
    tiles = axis_tiles(size, core, halo)
    covered = np.concatenate([np.arange(start, stop) for _, start, stop in tiles])
    np.testing.assert_array_equal(covered, np.arange(size))
    window = min(size, min(core, size) + 2 * halo)
    for first, start, stop in tiles:
      assert 0 <= first and first + window <= size
      assert first <= max(start - halo, 0) and min(stop + halo, size) <= first + window


def test_memory_plan_fits_the_budget_or_says_what_it_needs():
  model, params = _tiny_implicit()
  lr_shape, hr_shape = (40, 48, 40), (80, 96, 80)
  roomy = plan_memory(model, params, 2, lr_shape, hr_shape, 8 * 2**30, runtime_bytes=0)
  assert roomy.tile == lr_shape and roomy.peak_bytes <= 8 * 2**30
  assert roomy.conv_impl == resolve_conv_impl(model.conv_impl)  # one pass: the model's own form
  budget = roomy.fixed_bytes + int(0.6 * roomy.encoder_bytes)
  tight = plan_memory(model, params, 2, lr_shape, hr_shape, budget, runtime_bytes=0)
  assert tight.tile != lr_shape and tight.peak_bytes <= budget
  if roomy.conv_impl != "xla":  # CPU: where the 2D form tiles, the native one (less memory)
    taken = set()  # is taken when it encodes NATIVE_CONV_SLOWDOWN times fewer voxels
    for fraction in (0.6, 0.4):  # 2D form in 2.3x the volume's work, or native in one pass
      budget = roomy.fixed_bytes + int(fraction * roomy.encoder_bytes)
      plan = plan_memory(model, params, 2, lr_shape, hr_shape, budget, runtime_bytes=0)
      native = plan_memory(model.clone(conv_impl="xla"), params, 2, lr_shape, hr_shape, budget,
                           runtime_bytes=0)
      assert plan.peak_bytes <= budget and native.conv_impl == "xla"
      work, native_work = (tiling_work(lr_shape, p.tile, model.receptive_radius)[1]
                           for p in (plan, native))
      if plan.conv_impl == "xla":
        assert plan.tile == native.tile and plan.encoder_bytes == native.encoder_bytes
      else:
        assert NATIVE_CONV_SLOWDOWN * native_work >= work
      taken.add(plan.conv_impl)
    assert taken == {"xla", roomy.conv_impl}
  assert tight.chunk_size < roomy.chunk_size
  # The cheapest tiling that fits: slabs across one axis (each widened by the 8-voxel
  # radius), whereas near-cubic tiles of the same window would encode over 4 times the volume.
  window, work = tiling_work(lr_shape, tight.tile, model.receptive_radius)
  assert work <= 3 * math.prod(lr_shape)
  edge = max(c for c in range(1, 41) if math.prod(min(n, c + 16) for n in lr_shape) <= window)
  assert tiling_work(lr_shape, (edge,) * 3, model.receptive_radius)[1] > 4 * math.prod(lr_shape)
  with pytest.raises(MemoryBudgetError, match="needs at least"):
    plan_memory(model, params, 2, lr_shape, hr_shape, roomy.fixed_bytes, runtime_bytes=0)
