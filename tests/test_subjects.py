import os

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxsr import nifti
from jaxsr.dmri.data import subjects

SHAPE = (8, 9, 7)
DWI_AFFINE = nib.affines.from_matvec(np.diag([-2.0, 2.0, 2.0]), [30.0, -10.0, 5.0])  # LAS, 2 mm
T1_AFFINE = nib.affines.from_matvec(np.eye(3) * 1.25, [0.0, -22.0, -7.0])  # RAS, 1.25 mm
BVALS = np.array([0, 1000, 2000, 5, 990, 1010])
SIGNAL = np.array([2.0, 1.5, 0.9, 4.0, 2.4, 0.3])  # b0 mean 3 -> shell 0.5, 0.8, 0.1
BVECS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0.6, 0.8], [0.8, 0, 0.6]])


def t1_field(world):
  """The T1 intensity, linear in world mm."""
  return 500.0 + 3.0 * world[..., 0] + 2.0 * world[..., 1] - world[..., 2]


def dwi_mask():
  mask = np.zeros(SHAPE, bool)
  mask[1:-1, 2:-1, 1:-2] = True
  return mask


def write_hcp_subject(root, name="100307", signal=SIGNAL):
  """A tiny subject in the real HCP layout: ROOT/NAME/T1w/{Diffusion/, T1w_acpc_dc_restore_1.25}."""
  diffusion = root / name / "T1w" / "Diffusion"
  diffusion.mkdir(parents=True)
  pattern = 1.0 + np.random.default_rng(0).uniform(size=SHAPE + (1,))  # cancels in the ratio
  nifti.save_volume(diffusion / "data.nii.gz", (pattern * signal).astype(np.float32), DWI_AFFINE)
  nifti.save_volume(diffusion / "nodif_brain_mask.nii.gz", dwi_mask(), DWI_AFFINE)
  np.savetxt(diffusion / "bvals", BVALS[None], fmt="%d")
  np.savetxt(diffusion / "bvecs", BVECS.T)
  # The T1 grid covers the DWI's with a margin, on its own resolution and orientation.
  t1_voxels = np.moveaxis(np.indices((30, 32, 28)), 0, -1)
  t1 = t1_field(nib.affines.apply_affine(T1_AFFINE, t1_voxels)).astype(np.float32)
  nifti.save_volume(root / name / "T1w" / "T1w_acpc_dc_restore_1.25.nii.gz", t1, T1_AFFINE)
  return diffusion


def test_load_hcp_subject_normalises_dwi_and_resamples_t1_through_the_affines(tmp_path):
  folder = write_hcp_subject(tmp_path / "hcp")
  subject = subjects.load_hcp_subject(folder, cache_dir=tmp_path / "cache")
  mask = dwi_mask()
  assert subject.name == "100307"
  np.testing.assert_array_equal(subject.mask, mask)
  np.testing.assert_allclose(subject.dwi[mask], np.broadcast_to([0.5, 0.8, 0.1], (mask.sum(), 3)),
                             rtol=1e-5)
  np.testing.assert_array_equal(subject.dwi[~mask], 0.0)
  np.testing.assert_allclose(subject.bvecs, BVECS[[1, 4, 5]])
  assert subject.bval == pytest.approx(1000.0)
  np.testing.assert_allclose(subject.affine, DWI_AFFINE, atol=1e-5)
  np.testing.assert_allclose(subject.voxel_size, [2.0, 2.0, 2.0])
  assert subject.wm_mask is None
  assert isinstance(subject.dwi, np.memmap) and not subject.dwi.flags.writeable

  truth = t1_field(nib.affines.apply_affine(DWI_AFFINE, np.moveaxis(np.indices(SHAPE), 0, -1)))
  expected = np.clip(truth / np.percentile(truth[mask], 99.5), 0.0, 1.0)
  assert subject.t1.dtype == np.float32
  np.testing.assert_allclose(subject.t1, expected, atol=2e-3)


def test_preprocessing_cache_is_reused_and_invalidated_by_source_changes(tmp_path):
  folder = write_hcp_subject(tmp_path / "hcp")
  cache = tmp_path / "cache"
  subjects.load_hcp_subject(folder, cache_dir=cache)
  (entry,) = cache.iterdir()
  assert entry.name.startswith("100307-")
  mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
  again = subjects.load_hcp_subject(folder, cache_dir=cache)
  assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == mtimes
  np.testing.assert_allclose(again.dwi[dwi_mask()][:, 0], 0.5, rtol=1e-5)

  doubled = SIGNAL * np.array([1, 2, 1, 1, 1, 1])  # first shell volume now 1.0 of the mean b0
  data = folder / "data.nii.gz"
  nifti.save_volume(data, np.broadcast_to(doubled, SHAPE + (6,)).astype(np.float32), DWI_AFFINE)
  stat = data.stat()
  os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  changed = subjects.load_hcp_subject(folder, cache_dir=cache)
  assert len(list(cache.iterdir())) == 2
  np.testing.assert_allclose(changed.dwi[dwi_mask()][:, 0], 1.0, rtol=1e-5)


def _missing_bvecs(folder):
  os.remove(folder / "bvecs")
  return folder / "bvecs"


def _dwi_3d(folder):
  nifti.save_volume(folder / "data.nii.gz", np.ones(SHAPE, np.float32), DWI_AFFINE)
  return folder / "data.nii.gz"


def _count_mismatch(folder):
  np.savetxt(folder / "bvals", BVALS[None, :5], fmt="%d")
  return folder / "bvals"


def _nan_t1(folder):
  t1 = folder.parent / "T1w_acpc_dc_restore_1.25.nii.gz"
  nifti.save_volume(t1, np.full((4, 4, 4), np.nan, np.float32), T1_AFFINE)
  return t1


def _t1_elsewhere(folder):
  t1 = folder.parent / "T1w_acpc_dc_restore_1.25.nii.gz"
  far_away = nib.affines.from_matvec(np.eye(3) * 1.25, [200.0, -22.0, -7.0])
  nifti.save_volume(t1, np.ones((30, 32, 28), np.float32), far_away)
  return t1


def _no_t1(folder):
  os.remove(folder.parent / "T1w_acpc_dc_restore_1.25.nii.gz")
  return folder


def _mask_grid(folder):
  nifti.save_volume(folder / "nodif_brain_mask.nii.gz", np.ones((4, 4, 4), bool), DWI_AFFINE)
  return folder / "nodif_brain_mask.nii.gz"


@pytest.mark.parametrize("break_subject", [_missing_bvecs, _dwi_3d, _count_mismatch, _nan_t1,
                                           _t1_elsewhere, _no_t1, _mask_grid])
def test_bad_subject_raises_one_line_error_naming_the_file(tmp_path, break_subject):
  folder = write_hcp_subject(tmp_path / "hcp")
  bad_file = break_subject(folder)
  with pytest.raises(nifti.DataError) as error:
    subjects.load_hcp_subject(folder, cache_dir=tmp_path / "cache")
  assert str(error.value).startswith(f"{bad_file}: ") and "\n" not in str(error.value)
  assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_find_subject_dirs_reads_both_layouts(tmp_path):
  hcp = write_hcp_subject(tmp_path, "B")
  flat = tmp_path / "A"
  flat.mkdir()
  (flat / "data.nii.gz").write_bytes(b"")
  (tmp_path / "notes").mkdir()
  assert subjects.find_subject_dirs(tmp_path) == [flat, hcp]
  assert subjects.find_subject_dirs(tmp_path / "B") == [hcp]
  assert subjects.subject_name(hcp) == "B"
  with pytest.raises(nifti.DataError, match="no subject folders"):
    subjects.find_subject_dirs(tmp_path / "notes")


def test_split_is_deterministic_disjoint_and_keeps_the_last_subjects_for_test():
  names = [f"s{i}" for i in range(10)]
  split = subjects.split_subjects(names, num_val=2, num_test=3)
  assert split == {"train": names[:5], "val": ["s5", "s6"], "test": ["s7", "s8", "s9"]}
  assert subjects.split_subjects(names, num_val=2, num_test=3) == split
  with pytest.raises(nifti.DataError, match="no training subjects"):
    subjects.split_subjects(names, num_val=4, num_test=6)


def config(tmp_path, **overrides):
  c = ml_collections.ConfigDict(dict(
      source="embedded", root="", cache_dir=str(tmp_path / "cache"), num_subjects=3,
      voxel_size_mm=8.0, num_directions=6, snr=30.0, seed=0, bval=1000.0, bval_tol=100.0,
      num_val=1, num_test=1))
  c.update(overrides)
  return c


def test_load_subjects_embedded_end_to_end(tmp_path):
  splits = subjects.load_subjects(config(tmp_path))
  assert {k: [s.name for s in v] for k, v in splits.items()} == {
      "train": ["sub-00"], "val": ["sub-01"], "test": ["sub-02"]}
  assert (tmp_path / "cache" / subjects.embedded_root(config(tmp_path)).name / "manifest.json"
          ).is_file()
  for subject in sum(splits.values(), []):
    mask = np.asarray(subject.mask)
    assert subject.dwi.shape == mask.shape + (6,) and subject.bvecs.shape == (6, 3)
    np.testing.assert_allclose(subject.voxel_size, 8.0)
    dwi, t1 = np.asarray(subject.dwi), np.asarray(subject.t1)
    assert dwi.min() >= 0 and dwi.max() <= 1 and np.all(dwi[~mask] == 0)
    assert 0.3 < dwi[mask].mean() < 0.6  # b = 1000 attenuation of brain tissue
    assert t1.min() >= 0 and t1.max() <= 1
    wm = np.asarray(subject.wm_mask)
    assert mask[wm].all() and t1[wm].mean() > t1[mask & ~wm].mean()  # WM is bright on T1


def test_load_subjects_hcp_and_bad_splits(tmp_path):
  for name in ("100307", "100408", "101915"):
    write_hcp_subject(tmp_path / "hcp", name)
  splits = subjects.load_subjects(config(tmp_path, source="hcp", root=str(tmp_path / "hcp"),
                                         num_val=0))
  assert [[s.name for s in splits[k]] for k in ("train", "val", "test")] == [
      ["100307", "100408"], [], ["101915"]]
  with pytest.raises(nifti.DataError, match="no training subjects"):
    subjects.load_subjects(config(tmp_path, source="hcp", root=str(tmp_path / "hcp"), num_val=2))
  with pytest.raises(ValueError, match="unknown data source"):
    subjects.load_subjects(config(tmp_path, source="other"))
