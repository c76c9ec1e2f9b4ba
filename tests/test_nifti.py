import os

import hypothesis
import nibabel as nib
import numpy as np
import pytest

from jaxsr import nifti
from jaxsr.dmri.data import btable
from tests.fuzzing import NIFTI_FILES, write_fuzzed_nifti


def affine(voxel=(2.0, 2.0, 2.0), origin=(-10.0, -12.0, 4.0)):
  return nib.affines.from_matvec(np.diag(voxel), origin)


def write(path, data, aff=None):
  nib.save(nib.Nifti1Image(np.asarray(data), affine() if aff is None else aff), str(path))
  return str(path)


def test_save_load_round_trip_keeps_affine_codes_and_units(tmp_path):
  data = np.random.default_rng(0).normal(size=(4, 5, 3, 2)).astype(np.float32)
  aff = affine((1.5, -2.0, 2.5), (30.0, 40.0, -20.0))
  header = nib.Nifti1Header()
  header.set_qform(aff, code=1)
  header.set_sform(aff, code=4)
  path = tmp_path / "x.nii.gz"
  nifti.save_volume(path, data, aff, header)
  volume = nifti.load_volume(path, ndim=4)
  np.testing.assert_array_equal(volume.data, data)
  np.testing.assert_allclose(volume.affine, aff, atol=1e-5)
  np.testing.assert_allclose(volume.voxel_size, [1.5, 2.0, 2.5], atol=1e-6)
  assert (volume.header["qform_code"], volume.header["sform_code"]) == (1, 4)
  assert volume.header.get_xyzt_units()[0] == "mm"
  assert sorted(os.listdir(tmp_path)) == ["x.nii.gz"]  # no temp file left behind

  nifti.save_volume(path, data[..., 0] > 0, aff)  # no header: both codes 1 (scanner)
  volume = nifti.load_volume(path, ndim=3)
  assert (volume.header["qform_code"], volume.header["sform_code"]) == (1, 1)
  np.testing.assert_array_equal(volume.data, data[..., 0] > 0)


def test_trailing_singleton_axis_counts_as_3d(tmp_path):
  volume = nifti.load_volume(write(tmp_path / "x.nii", np.ones((3, 4, 5, 1))), ndim=3)
  assert volume.data.shape == (3, 4, 5) and volume.data.dtype == np.float32


def _missing(tmp_path):
  path = str(tmp_path / "missing.nii.gz")
  return path, lambda: nifti.load_volume(path)


def _not_nifti(tmp_path):
  path = tmp_path / "text.nii.gz"
  path.write_text("not an image\nsecond line\n")
  return str(path), lambda: nifti.load_volume(path)


def _3d_for_4d(tmp_path):
  path = write(tmp_path / "data.nii.gz", np.zeros((10, 10, 10), np.float32))
  return path, lambda: nifti.load_volume(path, ndim=4)


def _nan_voxels(tmp_path):
  data = np.ones((4, 4, 4), np.float32)
  data[0, 0, :3] = np.nan
  path = write(tmp_path / "nan.nii.gz", data)
  return path, lambda: nifti.load_volume(path)


def _bvals_count(tmp_path):
  np.savetxt(tmp_path / "bvals", [[0, 1000, 1000, 1000, 1000]])
  np.savetxt(tmp_path / "bvecs", np.eye(3)[[0, 0, 1, 2, 0, 1]].T)
  path = str(tmp_path / "bvals")
  return path, lambda: btable.load_bvals_bvecs(path, tmp_path / "bvecs", 6, "data.nii.gz")


def _bvecs_shape(tmp_path):
  np.savetxt(tmp_path / "bvals", [[0, 1000, 1000]])
  np.savetxt(tmp_path / "bvecs", np.ones((2, 3)))
  path = str(tmp_path / "bvecs")
  return path, lambda: btable.load_bvals_bvecs(tmp_path / "bvals", path, 3, "data.nii.gz")


def _complex_data(tmp_path):
  path = write(tmp_path / "complex.nii.gz", np.ones((4, 4, 4), np.complex64))
  return path, lambda: nifti.load_volume(path)


def _no_overlap(tmp_path):
  path = write(tmp_path / "T1w.nii.gz", np.ones((8, 8, 8)), affine(origin=(500.0, 0.0, 0.0)))
  volume = nifti.load_volume(path)
  return path, lambda: nifti.resample_to_grid(volume, (6, 6, 6), affine())


@pytest.mark.parametrize("case", [_missing, _not_nifti, _3d_for_4d, _nan_voxels, _bvals_count,
                                  _bvecs_shape, _complex_data, _no_overlap])
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path, case):
  path, call = case(tmp_path)
  with pytest.raises(nifti.DataError) as error:
    call()
  message = str(error.value)
  assert message.startswith(f"{path}: ") and "\n" not in message


def test_error_messages_say_what_is_wrong(tmp_path):
  with pytest.raises(nifti.DataError, match=r"expected a 4D volume, got 3D shape \(10, 10, 10\)"):
    _3d_for_4d(tmp_path)[1]()
  with pytest.raises(nifti.DataError, match="3 of 64 voxels are not finite"):
    _nan_voxels(tmp_path)[1]()
  with pytest.raises(nifti.DataError, match="5 b-values but data.nii.gz has 6 volumes"):
    _bvals_count(tmp_path)[1]()
  with pytest.raises(nifti.DataError, match="complex-valued data"):
    _complex_data(tmp_path)[1]()


def test_bvecs_are_read_in_either_orientation_and_normalised(tmp_path):
  np.savetxt(tmp_path / "bvals", [0, 1000, 995, 5])  # one column
  vectors = np.array([[np.nan, np.nan, np.nan], [2.0, 0.0, 0.0], [0.0, 3.0, 4.0], [0, 0, 0]])
  for name, table in (("fsl", vectors.T), ("rows", vectors)):
    np.savetxt(tmp_path / name, table)
    bvals, bvecs = btable.load_bvals_bvecs(tmp_path / "bvals", tmp_path / name, 4, "dwi")
    np.testing.assert_array_equal(bvals, [0, 1000, 995, 5])
    np.testing.assert_allclose(bvecs, [[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0, 0, 0]])


def test_shell_and_b0_indices():
  bvals = np.array([5, 1000, 2000, 0, 950, 1105, 40])
  np.testing.assert_array_equal(btable.shell_indices(bvals, 1000, 100), [1, 4])
  np.testing.assert_array_equal(btable.b0_indices(bvals), [0, 3, 6])
  with pytest.raises(nifti.DataError, match="b = 3000"):
    btable.shell_indices(bvals, 3000, 100)
  with pytest.raises(nifti.DataError, match="bv: no b0"):
    btable.b0_indices(np.array([1000, 2000]), source="bv")


def test_normalise_by_mean_b0_known_answer():
  dwi = np.zeros((2, 1, 1, 5), np.float32)
  dwi[0, 0, 0] = [1.0, 1.0, 3.0, 0.5, 9.0]  # b0 1 and 3 -> mean 2
  dwi[1, 0, 0] = [4.0, 1.0, 4.0, 1.0, 1.0]  # outside the mask
  bvals = np.array([0, 1000, 0, 2000, 1010])
  mask = np.array([True, False]).reshape(2, 1, 1)
  out = btable.normalise_by_mean_b0(dwi, bvals, mask, bval=1000, tol=100)
  assert out.dtype == np.float32 and out.shape == (2, 1, 1, 2)
  np.testing.assert_array_equal(out[0, 0, 0], [0.5, 1.0])  # 9 / 2 clipped to 1
  np.testing.assert_array_equal(out[1], 0.0)
  dwi[0, 0, 0, [0, 2]] = 0.0  # no b0 signal: guarded division
  np.testing.assert_array_equal(btable.normalise_by_mean_b0(dwi, bvals, mask), 0.0)


@pytest.mark.parametrize("order", [1, 3])
def test_resample_to_grid_reproduces_a_linear_function_in_world_coordinates(tmp_path, order):
  def field(world):  # a linear function of world mm
    return 3.0 + 0.5 * world[..., 0] - 0.25 * world[..., 1] + 0.75 * world[..., 2]

  # Source: 2 x 1.5 x 2.5 mm with x flipped (radiological), 24 x 30 x 20 voxels.
  source_affine = nib.affines.from_matvec(np.diag([-2.0, 1.5, 2.5]), [40.0, -20.0, -25.0])
  source_voxels = np.moveaxis(np.indices((24, 30, 20)), 0, -1)
  path = write(tmp_path / "src.nii.gz",
               field(nib.affines.apply_affine(source_affine, source_voxels)).astype(np.float32),
               source_affine)
  # Target: 3 mm voxels, shifted by a fraction of a voxel, well inside the source.
  target_affine = nib.affines.from_matvec(np.eye(3) * 3.0, [-1.3, -8.2, -12.6])
  out = nifti.resample_to_grid(nifti.load_volume(path), (8, 7, 9), target_affine, order=order)
  target_voxels = np.moveaxis(np.indices((8, 7, 9)), 0, -1)
  expected = field(nib.affines.apply_affine(target_affine, target_voxels))
  assert out.dtype == np.float32 and out.shape == (8, 7, 9)
  np.testing.assert_allclose(out, expected, atol=1e-3 if order == 1 else 2e-2)


def test_resample_overlap_is_measured_on_the_mask(tmp_path):
  # Source covers only the x < 6 half of the 12-voxel target grid.
  volume = nifti.load_volume(write(tmp_path / "half.nii.gz", np.ones((6, 12, 12)), affine()))
  left, right = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
  left[:5, 3:9, 3:9], right[7:, 3:9, 3:9] = True, True
  out = nifti.resample_to_grid(volume, (12, 12, 12), affine(), order=0, mask=left)
  np.testing.assert_array_equal(out[:6], 1.0)
  np.testing.assert_array_equal(out[6:], 0.0)
  with pytest.raises(nifti.DataError, match="0% of the target brain-mask voxels"):
    nifti.resample_to_grid(volume, (12, 12, 12), affine(), mask=right)


@hypothesis.settings(max_examples=60, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(nifti_file=NIFTI_FILES)
def test_load_volume_returns_finite_float32_or_raises_data_error(tmp_path, nifti_file):
  path = write_fuzzed_nifti(tmp_path / "fuzz.nii", **nifti_file)
  try:
    volume = nifti.load_volume(path)
  except nifti.DataError as error:
    assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
  else:
    assert volume.data.dtype == np.float32 and volume.data.ndim in (3, 4)
    assert np.all(np.isfinite(volume.data)) and np.all(np.isfinite(volume.affine))


@pytest.mark.parametrize("name, shape", [("s.nii.gz", (5, 4, 3, 6)), ("s.nii", (5, 4, 3)),
                                         ("t.nii.gz", (3, 2, 4, 1))])
def test_streamed_volumes_read_back_as_one_image(tmp_path, name, shape):
  data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  aff = affine((1.25, -1.5, 2.0), (30.0, -4.0, 12.0))
  header = nib.Nifti1Header()
  header.set_qform(aff, code=2)
  header.set_sform(aff, code=4)
  header.set_xyzt_units("mm", "sec")
  volumes = [data[..., v] for v in range(shape[3])] if len(shape) == 4 else [data]
  nifti.write_volumes(tmp_path / name, shape, aff, iter(volumes), header=header,
                      repetition_time=3.2)
  image = nib.load(str(tmp_path / name))
  np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), data)
  np.testing.assert_allclose(image.affine, aff, atol=1e-5)
  assert (image.header["qform_code"], image.header["sform_code"]) == (2, 4)
  assert image.header.get_xyzt_units() == ("mm", "sec")
  if len(shape) == 4:
    assert image.header.get_zooms()[3] == pytest.approx(3.2)
  # Lazily opened, volume by volume, it gives the same voxels.
  lazy = nifti.open_volume(tmp_path / name)
  assert lazy.shape == (shape if shape[-1] != 1 else shape[:3])
  for v in range(lazy.num_volumes):
    np.testing.assert_array_equal(lazy.volume(v), data[..., v] if len(shape) == 4 else data)


def test_streamed_writer_refuses_wrong_volumes(tmp_path):
  with pytest.raises(ValueError, match="does not fit"):
    nifti.write_volumes(tmp_path / "a.nii", (4, 4, 4, 2), affine(), [np.zeros((4, 4, 5))])
  with pytest.raises(ValueError, match="1 volumes written, 2 expected"):
    nifti.write_volumes(tmp_path / "b.nii", (4, 4, 4, 2), affine(), [np.zeros((4, 4, 4))])
  with pytest.raises(ValueError, match="does not fit"):
    nifti.write_volumes(tmp_path / "c.nii", (4, 4, 4), affine(), [np.zeros((4, 4, 4))] * 2)


def test_lazy_volume_names_the_volume_with_nan_voxels(tmp_path):
  data = np.ones((3, 3, 3, 4), np.float32)
  data[1, 1, 1, 2] = np.nan
  lazy = nifti.open_volume(write(tmp_path / "x.nii.gz", data))  # the header alone is valid
  np.testing.assert_array_equal(lazy.volume(1), 1.0)
  with pytest.raises(nifti.DataError, match="1 of 27 voxels in volume 2 are not finite"):
    lazy.volume(2)
