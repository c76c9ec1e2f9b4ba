"""Voxel-centre coordinates and trilinear sampling (jaxsr.dmri.models.sampling)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxsr.dmri.models import sampling

SHAPE = (4, 5, 3)


def random_features(seed=0, shape=SHAPE, channels=2):
  return np.random.default_rng(seed).normal(size=(*shape, channels)).astype(np.float32)


def random_coords(seed, count, low=-1.0, high=1.0):
  return np.random.default_rng(seed).uniform(low, high, (count, 3)).astype(np.float32)


def test_voxel_centres_half_voxel_convention():
  np.testing.assert_allclose(sampling.voxel_centres(4), [-0.75, -0.25, 0.25, 0.75])
  np.testing.assert_allclose(sampling.voxel_centres(1), [0.0])
  np.testing.assert_allclose(sampling.continuous_index(sampling.voxel_centres(7), 7),
                             np.arange(7), atol=1e-6)


def test_centres_match_jax_image_resize():
  """Resizing a linear ramp of the coordinate keeps it linear in the coordinate (same frame)."""
  lr = sampling.voxel_centres(5)
  hr = jax.image.resize(lr, (15,), "linear")
  np.testing.assert_allclose(hr[1:-1], sampling.voxel_centres(15)[1:-1], atol=1e-6)


def test_grid_coordinates():
  grid = sampling.grid_coordinates(SHAPE)
  assert grid.shape == (*SHAPE, 3) and grid.dtype == jnp.float32
  for i, j, k in [(0, 0, 0), (3, 1, 2), (2, 4, 1)]:
    np.testing.assert_allclose(grid[i, j, k], [(2 * i + 1) / 4 - 1, (2 * j + 1) / 5 - 1,
                                               (2 * k + 1) / 3 - 1], atol=1e-7)


def test_chunk_coordinates_tile_the_grid_with_traced_start():
  flat = sampling.grid_coordinates(SHAPE).reshape(-1, 3)
  count = 16
  chunks = [sampling.chunk_coordinates(SHAPE, jnp.int32(start), count) for start in range(0, flat.shape[0], count)]
  tiled = jnp.concatenate(chunks)
  np.testing.assert_allclose(tiled[:flat.shape[0]], flat, atol=1e-7)
  assert (tiled[flat.shape[0]:, 0] > 1).all()  # past the end: beyond the field of view


def test_samples_at_voxel_centres_are_the_features():
  features = random_features()
  coords = sampling.grid_coordinates(SHAPE).reshape(-1, 3)
  np.testing.assert_allclose(sampling.sample_trilinear(features, coords),
                             features.reshape(-1, 2), rtol=1e-5, atol=1e-6)


def test_linear_feature_map_is_reproduced():
  slopes = jnp.array([[0.5, -2.0], [1.5, 0.25], [-1.0, 3.0]])  # (3 axes, C)
  index = jnp.stack(jnp.meshgrid(*[jnp.arange(n) for n in SHAPE], indexing="ij"), -1)
  features = index @ slopes + jnp.array([0.3, -0.7])
  # Interior points: between the outermost voxel centres on every axis.
  bound = jnp.array([1 - 1 / n for n in SHAPE])
  coords = random_coords(1, 200) * bound
  x = jnp.stack([sampling.continuous_index(coords[:, a], n) for a, n in enumerate(SHAPE)], -1)
  np.testing.assert_allclose(sampling.sample_trilinear(features, coords),
                             x @ slopes + jnp.array([0.3, -0.7]), rtol=1e-5, atol=1e-5)


def test_outside_the_outermost_centres_takes_edge_values():
  features = random_features()
  corners = jnp.array(list(itertools.product((-1.0, 1.0), repeat=3)))
  beyond = 1.7 * corners
  at_centres = corners * jnp.array([1 - 1 / n for n in SHAPE])
  np.testing.assert_allclose(sampling.sample_trilinear(features, beyond),
                             sampling.sample_trilinear(features, at_centres), atol=1e-6)


@pytest.mark.parametrize("shape", [SHAPE, (1, 6, 2)])
def test_equals_map_coordinates_order1_nearest(shape):
  features = random_features(2, shape, channels=3)
  coords = random_coords(3, 300, -1.4, 1.4)
  index = [sampling.continuous_index(coords[:, a], n) for a, n in enumerate(shape)]
  expected = jnp.stack([jax.scipy.ndimage.map_coordinates(features[..., c], index, order=1,
                                                          mode="nearest")
                        for c in range(3)], -1)
  np.testing.assert_allclose(sampling.sample_trilinear(features, coords), expected,
                             rtol=1e-5, atol=1e-5)


def test_batched_equals_per_example():
  features = np.stack([random_features(s) for s in range(3)])
  coords = np.stack([random_coords(10 + s, 7) for s in range(3)])
  batched = sampling.sample_trilinear_batched(features, coords)
  assert batched.shape == (3, 7, 2)
  for b in range(3):
    np.testing.assert_allclose(batched[b], sampling.sample_trilinear(features[b], coords[b]),
                               rtol=1e-6)


def test_gradients_are_finite_and_correct():
  features = random_features()
  coords = random_coords(4, 20, -1.2, 1.2)
  grad = jax.grad(lambda f: jnp.sum(sampling.sample_trilinear(f, coords) ** 2))(features)
  assert np.isfinite(grad).all()
  check_grads(lambda f: sampling.sample_trilinear(f, coords), (features,), order=1,
              modes=("rev",), atol=1e-2, rtol=1e-2)
  # Coordinates: piecewise linear, checked away from the kinks at voxel centres.
  interior = jnp.array([[-0.41, 0.13, 0.29], [0.37, -0.55, -0.07]])
  check_grads(lambda c: sampling.sample_trilinear(features, c), (interior,), order=1,
              modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2)


def test_local_offsets_are_zero_at_lr_centres_and_half_at_2x_hr_centres():
  lr_shape = (4, 5, 3)
  np.testing.assert_allclose(sampling.local_offsets(sampling.grid_coordinates(lr_shape), lr_shape), 0, atol=1e-6)
  hr = sampling.grid_coordinates((8, 10, 6))
  offsets = np.asarray(sampling.local_offsets(hr, lr_shape))
  np.testing.assert_allclose(np.abs(offsets), 0.5, atol=1e-5)
  assert offsets[0, 0, 0, 0] == pytest.approx(-0.5) and offsets[1, 0, 0, 0] == pytest.approx(0.5)


def test_local_offsets_do_not_depend_on_the_grid_size():
  """The same physical point relative to its LR voxel: on a patch of 4 voxels and a volume of 12."""
  point_in_patch = jnp.array([[-1 + 2 * (1.3 / 4), 0.0, 0.0]])  # 1.3 voxels into a 4-voxel axis
  point_in_volume = jnp.array([[-1 + 2 * (5.3 / 12), 0.0, 0.0]])  # 5.3 voxels into 12
  a = sampling.local_offsets(point_in_patch, (4, 4, 4))[0, 0]
  b = sampling.local_offsets(point_in_volume, (12, 4, 4))[0, 0]
  assert float(a) == pytest.approx(float(b), abs=1e-5) and float(a) == pytest.approx(-0.4, abs=1e-5)


@pytest.mark.parametrize("lr_shape,hr_shape", [((5, 4, 6), (12, 9, 13)), ((6, 6, 6), (3, 6, 4)),
                                               ((1, 3, 2), (2, 7, 5))])
def test_grid_sampling_equals_the_gathers_at_every_voxel_centre(lr_shape, hr_shape):
  rng = np.random.default_rng(sum(hr_shape))
  features = jnp.asarray(rng.standard_normal((2, *lr_shape, 3)), jnp.float32)
  coords = jnp.broadcast_to(sampling.grid_coordinates(hr_shape).reshape(1, -1, 3),
                            (2, int(np.prod(hr_shape)), 3))
  expected = sampling.sample_trilinear_batched(features, coords).reshape(2, *hr_shape, 3)
  got = sampling.sample_trilinear_grid(features, hr_shape)
  assert got.shape == (2, *hr_shape, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  grad = jax.grad(lambda f: jnp.sum(weights * sampling.sample_trilinear_grid(f, hr_shape)))
  grad_gather = jax.grad(lambda f: jnp.sum(
      weights * sampling.sample_trilinear_batched(f, coords).reshape(expected.shape)))
  np.testing.assert_allclose(grad(features), grad_gather(features), rtol=1e-4, atol=1e-4)


def test_interpolation_matrix_rows_are_partitions_of_unity_with_two_neighbours():
  matrix = sampling.interpolation_matrix(10, 4)
  np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-6)
  assert ((matrix > 0).sum(axis=1) <= 2).all()
  np.testing.assert_allclose(matrix[0], [1, 0, 0, 0])  # clamped at the outermost centre
  np.testing.assert_allclose(sampling.interpolation_matrix(4, 4), np.eye(4), atol=1e-6)
