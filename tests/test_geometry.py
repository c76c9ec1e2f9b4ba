import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxsr import geometry
from jaxsr.dmri.degradation.degrade import tricubic_upsample
from jaxsr.dmri.models.sampling import continuous_index, grid_coordinates


def oblique_affine(voxel=(2.0, 2.0, 2.0), origin=(-40.0, 30.0, -20.0)):
  """A rotated (about two axes), x-flipped voxel -> world affine with the given voxel sizes."""
  a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  return nib.affines.from_matvec(rz @ rx @ np.diag(voxel) @ np.diag([-1, 1, 1]), origin)


def test_output_shape_from_voxel_size_scale_or_shape():
  aniso = oblique_affine((4.0, 4.0, 5.0))
  assert geometry.output_shape((58, 58, 24), aniso, voxel_size=1.0) == (232, 232, 120)
  assert geometry.output_shape((58, 58, 24), aniso, voxel_size=(2.0, 2.0, 2.5)) == (116, 116, 48)
  assert geometry.output_shape((10, 11, 9), aniso, scale=2.4) == (24, 26, 22)  # rounded
  assert geometry.output_shape((10, 11, 9), aniso, scale=(2, 2, 1.5)) == (20, 22, 14)
  assert geometry.output_shape((10, 11, 9), aniso, out_shape=(20, 11, 30)) == (20, 11, 30)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"), ({"scale": 2, "voxel_size": 1}, "exactly one"),
    ({"scale": 0}, "positive"), ({"scale": -2}, "positive"), ({"voxel_size": np.nan}, "finite"),
    ({"scale": (2, 2)}, "one number or three"), ({"out_shape": (20, 20, 20.5)}, "whole"),
    ({"scale": 0.5}, "fewer voxels"), ({"voxel_size": 3.0}, "fewer voxels")])
def test_bad_grid_requests_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    geometry.output_shape((10, 10, 10), oblique_affine(), **kwargs)


def test_output_grid_keeps_the_field_of_view_and_orientation():
  affine, in_shape, out_shape = oblique_affine((4.0, 4.0, 5.0)), (58, 58, 24), (232, 232, 120)
  out_affine = geometry.output_affine(affine, in_shape, out_shape)
  np.testing.assert_allclose(nib.affines.voxel_sizes(out_affine), [1.0, 1.0, 1.0], atol=1e-12)
  # The outer faces of the two grids are the same world points (the corners of the box) ...
  for corner in np.ndindex(2, 2, 2):
    in_face = np.where(corner, np.asarray(in_shape) - 0.5, -0.5)
    out_face = np.where(corner, np.asarray(out_shape) - 0.5, -0.5)
    np.testing.assert_allclose(nib.affines.apply_affine(out_affine, out_face),
                               nib.affines.apply_affine(affine, in_face), atol=1e-9)
  # ... and the voxel axes keep their directions (b-vectors stay valid).
  directions = out_affine[:3, :3] / nib.affines.voxel_sizes(out_affine)
  np.testing.assert_allclose(directions, affine[:3, :3] / nib.affines.voxel_sizes(affine),
                             atol=1e-12)


def test_model_queries_follow_the_output_grid():
  """HR voxel centres in the training frame land on the LR indices the output affine says."""
  in_shape, out_shape = (5, 7, 4), (12, 7, 10)
  coords = np.asarray(grid_coordinates(out_shape))
  lr_index = np.stack([np.asarray(continuous_index(jnp.asarray(coords[..., a]), n))
                       for a, n in enumerate(in_shape)], axis=-1)
  mapping = geometry.output_to_input_index(in_shape, out_shape)
  expected = nib.affines.apply_affine(mapping, np.indices(out_shape).transpose(1, 2, 3, 0))
  np.testing.assert_allclose(lr_index, expected, atol=1e-5)


def blob(points: np.ndarray, centre: np.ndarray, sigma: float = 7.0) -> np.ndarray:
  """An isotropic Gaussian of `sigma` mm at `centre` (world mm), evaluated at (..., 3) points."""
  return np.exp(-np.sum((points - centre) ** 2, axis=-1) / (2 * sigma ** 2)).astype(np.float32)


def world_centroid(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
  points = geometry.voxel_centres_world(affine, volume.shape)
  return np.tensordot(volume, points, axes=3) / volume.sum()


@pytest.mark.parametrize("voxel, target", [((2.0, 2.0, 2.0), 1.0), ((4.0, 4.0, 5.0), 1.0),
                                           ((2.0, 2.0, 3.0), (1.0, 1.5, 1.2))])
def test_analytic_volume_lines_up_in_world_coordinates(voxel, target):
  """A blob sampled on a coarse oblique grid, interpolated onto the output grid, stays in place.

  Interpolation in the training frame (tricubic, the same voxel-centre convention
  as the model's queries) placed by the output affine: the blob's world centroid
  moves less than a tenth of an output voxel and the values match the analytic
  function at the output voxel centres.
  """
  affine = oblique_affine(voxel)
  in_shape = tuple(int(round(60 / v)) for v in voxel)  # a 60 mm cube
  centre = nib.affines.apply_affine(affine, (np.asarray(in_shape) - 1) / 2 + [0.3, -0.8, 0.45])
  lr = blob(geometry.voxel_centres_world(affine, in_shape), centre)
  out_shape = geometry.output_shape(in_shape, affine, voxel_size=target)
  out_affine = geometry.output_affine(affine, in_shape, out_shape)
  hr = np.asarray(tricubic_upsample(jnp.asarray(lr), out_shape))
  out_voxel = nib.affines.voxel_sizes(out_affine)
  shift = world_centroid(hr, out_affine) - world_centroid(lr, affine)
  assert np.linalg.norm(shift) < 0.1 * out_voxel.min(), shift
  truth = blob(geometry.voxel_centres_world(out_affine, out_shape), centre)
  assert np.abs(hr - truth).max() < 0.03  # peak 1
  # A one-voxel error in the affine would be caught: the same values misplaced.
  wrong = out_affine @ nib.affines.from_matvec(np.eye(3), [1.0, 0, 0])
  assert np.abs(hr - blob(geometry.voxel_centres_world(wrong, out_shape), centre)).max() > 0.05


def test_nearest_on_output_copies_each_input_voxel_onto_its_cell():
  mask = np.zeros((4, 3, 2), bool)
  mask[1, 2, 0] = True
  out = geometry.nearest_on_output(mask, (8, 9, 5))
  assert out.shape == (8, 9, 5)
  # Input voxel (1, 2, 0) holds the centres of output voxels 2..3 on x, 6..8 on y, 0..1 on z.
  expected = np.zeros((8, 9, 5), bool)
  expected[2:4, 6:9, 0:2] = True
  np.testing.assert_array_equal(out, expected)


def test_a_request_of_two_grids_names_the_api_arguments():
  from jaxsr.dmri.app.grid import output_grid
  from jaxsr.errors import UpsampleError

  with pytest.raises(UpsampleError, match="exactly one of voxel_size, scale and shape$"):
    output_grid((4, 4, 4), np.eye(4), scale=2, shape=(8, 8, 8))
