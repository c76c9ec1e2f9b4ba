"""The embedded dMRI phantom (`jaxsr.dmri.data.phantom`): layout, cache, determinism, physics."""

import json

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table as dipy_gradient_table
from dipy.reconst.dti import TensorModel

from jaxsr import anatomy, nifti
from jaxsr.dmri.data import btable
from jaxsr.dmri.data import phantom as synthetic

BUILD = dict(num_subjects=2, voxel_size_mm=8.0, num_directions=6, num_b0=2, snr=30.0)


def read(folder, name="data.nii.gz"):
  return nib.load(str(folder / name)).get_fdata(dtype=np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("embedded") / "data"
  return root, synthetic.build_embedded_dataset(root, seed=0, num_workers=2, **BUILD)


@pytest.fixture(scope="module")
def phantom():
  bvals, bvecs = synthetic.gradient_table(num_directions=12, num_b0=1)
  return bvals, bvecs, synthetic.simulate_subject(
      0, bvals=bvals, bvecs=bvecs, voxel_size_mm=4.0, snr=30.0, seed=0, deformation_mm=3.0)


def test_layout_shapes_and_grids_follow_the_voxel_size(dataset):
  root, folders = dataset
  assert [f.name for f in folders] == ["sub-00", "sub-01"]
  assert sorted(p.name for p in root.parent.iterdir()) == ["data"]  # no temp folders left
  low, high = anatomy.load_template().brain_bounds()
  expected = np.ceil((high - low) / 8.0).astype(int) + 1 + 2 * synthetic.GRID_MARGIN_VOXELS
  for folder in folders:
    dwi = nifti.load_volume(folder / "data.nii.gz", ndim=4)
    bvals, bvecs = btable.load_bvals_bvecs(folder / "bvals", folder / "bvecs", 8, dwi.path)
    assert dwi.data.shape == tuple(expected) + (8,)
    np.testing.assert_allclose(dwi.voxel_size, 8.0)
    assert len(btable.b0_indices(bvals)) == 2 and len(btable.shell_indices(bvals)) == 6
    for name in ("nodif_brain_mask.nii.gz", "wm_mask.nii.gz"):
      mask = nifti.load_volume(folder / name, ndim=3)
      assert mask.data.shape == dwi.data.shape[:3] and set(np.unique(mask.data)) == {0.0, 1.0}
      np.testing.assert_allclose(mask.affine, dwi.affine)
    t1 = nifti.load_volume(folder / "T1w.nii.gz", ndim=3)
    np.testing.assert_allclose(t1.voxel_size, 4.0)  # its own grid: max(1 mm, voxel / 2)
    # The T1 field of view covers the DWI's.
    corners = nib.affines.apply_affine(np.linalg.inv(t1.affine) @ dwi.affine,
                                       np.array([[0, 0, 0], np.array(dwi.data.shape[:3]) - 1]))
    assert np.all(corners >= -0.5) and np.all(corners <= np.array(t1.data.shape) - 0.5)


def test_build_is_cached(dataset):
  root, folders = dataset
  mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
  assert synthetic.build_embedded_dataset(root, seed=0, **BUILD) == folders
  assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes
  assert json.loads((root / "manifest.json").read_text())["num_directions"] == 6


def test_build_is_deterministic_in_any_process_count_and_rebuilt_for_other_parameters(
    dataset, tmp_path):
  root, folders = dataset  # built by two processes
  again = synthetic.build_embedded_dataset(tmp_path / "again", seed=0, num_workers=1, **BUILD)
  for a, b in zip(folders, again):
    for name in ("data.nii.gz", "T1w.nii.gz", "nodif_brain_mask.nii.gz"):
      np.testing.assert_array_equal(read(a, name), read(b, name))
  other = synthetic.build_embedded_dataset(tmp_path / "again", seed=1, num_workers=1,
                                          **BUILD)  # replaces it
  assert json.loads((tmp_path / "again" / "manifest.json").read_text())["seed"] == 1
  assert not np.array_equal(read(folders[0]), read(other[0]))
  assert not np.array_equal(read(folders[0], "T1w.nii.gz"), read(other[0], "T1w.nii.gz"))
  assert not np.array_equal(read(folders[0]), read(folders[1]))  # subjects differ too
  assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_an_identical_build_finished_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
  """Two processes building the same data into one cache (a distributed run): the one that
  finishes second keeps the first one's folders, which the first may already be reading."""
  root = tmp_path / "data"
  build = dict(BUILD, num_subjects=1)
  build_subject, others = synthetic._build_subject, {}

  def build_while_another_process_finishes(job):
    build_subject(job)
    monkeypatch.setattr(synthetic, "_build_subject", build_subject)
    synthetic.build_embedded_dataset(root, seed=0, num_workers=1, **build)  # the other one
    others.update({p: p.stat().st_ino for p in root.rglob("*")})

  monkeypatch.setattr(synthetic, "_build_subject", build_while_another_process_finishes)
  folders = synthetic.build_embedded_dataset(root, seed=0, num_workers=1, **build)
  assert folders == [root / "sub-00"] and others
  # The other process's files, untouched; no temporary or stale folder left.
  assert {p: p.stat().st_ino for p in root.rglob("*")} == others
  assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_gradient_table_uses_well_spread_dipy_directions():
  bvals, bvecs = synthetic.gradient_table(num_directions=10, num_b0=3)
  np.testing.assert_array_equal(np.flatnonzero(bvals == 0), [0, 4, 8])
  weighted = bvecs[bvals > 0]
  np.testing.assert_allclose(np.linalg.norm(weighted, axis=1), 1.0, atol=1e-6)
  assert np.all(np.abs(bvals[bvals > 0] - 1000) < 20)
  cosines = np.abs(weighted @ weighted.T)[~np.eye(10, dtype=bool)]
  assert np.degrees(np.arccos(cosines.max())) > 30  # first 10 of small_64D: < 20 degrees
  with pytest.raises(ValueError):
    synthetic.gradient_table(num_directions=65, num_b0=1)


def test_tissue_contrast_matches_diffusion_physics(phantom):
  bvals, bvecs, p = phantom
  wm, gm, csf = (p.fractions[..., t] for t in range(3))
  b0 = p.dwi[..., bvals == 0].mean(-1)
  ratio = p.dwi[..., bvals > 0].mean(-1) / np.maximum(b0, 1e-6)
  pure = {"wm": (wm > 0.9) & p.mask, "gm": (gm > 0.7) & p.mask, "csf": (csf > 0.5) & p.mask}
  assert all(sel.sum() >= 10 for sel in pure.values())
  fit = TensorModel(dipy_gradient_table(bvals, bvecs=bvecs))
  fa = {t: np.median(fit.fit(p.dwi[sel]).fa) for t, sel in pure.items()}
  mean_ratio = {t: ratio[sel].mean() for t, sel in pure.items()}
  median_b0 = {t: np.median(b0[sel]) for t, sel in pure.items()}
  assert fa["wm"] > 0.35 and fa["gm"] < 0.25 and fa["wm"] > fa["gm"] + 0.15
  assert mean_ratio["csf"] < 0.2 < mean_ratio["gm"] and mean_ratio["csf"] < mean_ratio["wm"]
  assert 900 < median_b0["wm"] < 1100 < median_b0["gm"] < median_b0["csf"]
  assert wm[p.wm_mask].min() > 0.5 and p.mask[p.wm_mask].all()


def test_noise_matches_the_snr(phantom):
  bvals, _, p = phantom
  b0 = p.dwi[..., bvals == 0]
  # Noise-only background is Rayleigh: mean = σ √(π/2).
  background = p.dwi[p.fractions.sum(-1) == 0]
  assert background.size > 1000
  np.testing.assert_allclose(background.mean() / np.sqrt(np.pi / 2), p.noise_sigma, rtol=0.05)
  np.testing.assert_allclose(p.noise_sigma, b0[p.wm_mask].mean() / 30.0, rtol=0.05)
