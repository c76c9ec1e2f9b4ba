"""k-space truncation / data consistency and the embedded MRSI patients."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxsr import kspace
from jaxsr.mrsi import phantom as mrsi


def band_limited(size: int, max_frequency: int, seed: int = 0) -> np.ndarray:
  """A real (size, size) map whose spectrum has only |f| < max_frequency on both axes."""
  rng = np.random.default_rng(seed)
  spectrum = np.zeros((size, size), complex)
  f = np.fft.fftfreq(size) * size
  low = (np.abs(f)[:, None] < max_frequency) & (np.abs(f)[None, :] < max_frequency)
  spectrum[low] = rng.standard_normal(low.sum()) + 1j * rng.standard_normal(low.sum())
  return np.fft.ifft2(spectrum).real.astype(np.float32)


def test_truncation_keeps_exactly_the_central_frequencies():
  smooth = band_limited(64, 8)  # |f| < 8: inside a 16 x 16 acquisition
  np.testing.assert_allclose(kspace.truncate(smooth, 16), smooth, atol=1e-5)
  detailed = band_limited(64, 30, seed=1)
  lr = np.asarray(kspace.truncate(detailed, 16))
  assert np.abs(lr - detailed).max() > 0.1 * np.abs(detailed).max()
  np.testing.assert_allclose(kspace.truncate(lr, 16), lr, atol=1e-5)  # idempotent
  np.testing.assert_allclose(kspace.truncate(detailed, 64), detailed, atol=1e-5)
  assert int(kspace.central_mask(64, 16).sum()) == 15 * 15  # |f| < 8 on both axes


def test_data_consistency_takes_measured_centre_and_predicted_rest():
  truth, guess = band_limited(32, 16, seed=2), band_limited(32, 16, seed=3)
  measured = kspace.truncate(truth, 10)
  out = np.asarray(kspace.data_consistency(guess, measured, 10))
  # Truncating the output gives the measurement; the high frequencies are the guess's.
  np.testing.assert_allclose(kspace.truncate(out, 10), measured, atol=1e-5)
  np.testing.assert_allclose(out - np.asarray(kspace.truncate(out, 10)),
                             guess - np.asarray(kspace.truncate(guess, 10)), atol=1e-5)


def test_resolution_may_differ_per_map_in_a_batch():
  maps = np.stack([band_limited(32, 16, seed=s) for s in range(3)])
  n = jnp.array([8, 12, 16])
  batched = np.asarray(kspace.truncate(maps, n))
  for i in range(3):
    np.testing.assert_allclose(batched[i], kspace.truncate(maps[i], int(n[i])), atol=1e-6)


def test_cross_validation_folds():
  test_patients = []
  for fold in range(5):
    split = mrsi.cross_validation_split(15, fold)
    assert [len(split[k]) for k in ("train", "val", "test")] == [9, 3, 3]
    assert not set(split["train"]) & set(split["val"] + split["test"])
    assert not set(split["val"]) & set(split["test"])
    test_patients += split["test"]
  assert sorted(test_patients) == list(range(15))
  with pytest.raises(ValueError, match="fold"):
    mrsi.cross_validation_split(15, 5)


@pytest.fixture(scope="module")
def patient():
  return mrsi.simulate_patient(0, seed=0)


def test_patient_shapes_and_ranges(patient):
  slices = patient.maps.shape[0]
  assert 11 <= slices <= 18
  assert patient.maps.shape == (slices, len(mrsi.METABOLITES), 64, 64)
  for image in (patient.t1, patient.flair):
    assert image.shape == (slices, 64, 64) and 0 <= image.min() and image.max() <= 1
  assert patient.quality.dtype == bool and not (patient.quality & ~patient.brain).any()
  assert np.all(np.isfinite(patient.maps)) and np.all(patient.maps[:, :, ~patient.brain[0]][0] == 0)
  np.testing.assert_allclose(np.abs(np.diag(patient.affine)[:3]), mrsi.VOXEL_MM)


def test_healthy_tissue_has_literature_concentrations(patient):
  healthy = patient.quality & (patient.lesion == 0)
  for m, name in enumerate(mrsi.METABOLITES):
    values = patient.maps[:, m][healthy]
    low, high = sorted(mrsi.CONCENTRATIONS[name])
    # Partial-volume mixtures of GM and WM, with ~10 % field variation and CSF dilution.
    assert 0.5 * low < np.median(values) < 1.2 * high, (name, np.median(values))


def test_lesion_raises_choline_and_glycine_and_lowers_naa(patient):
  tumour = patient.quality & (patient.metabolic_lesion == 2)
  healthy = patient.quality & (patient.metabolic_lesion == 0) & (patient.lesion == 0)
  assert tumour.sum() > 10
  ratio = {name: patient.maps[:, m][tumour].mean() / patient.maps[:, m][healthy].mean()
           for m, name in enumerate(mrsi.METABOLITES)}
  assert ratio["tCho"] > 1.8 and ratio["Gly"] > 2.0 and ratio["NAA"] < 0.5, ratio
  anatomical_tumour = patient.quality & (patient.lesion == 2)
  assert patient.flair[anatomical_tumour].mean() > patient.flair[healthy].mean() + 0.2


@pytest.fixture(scope="module")
def patients():
  return [mrsi.simulate_patient(i, seed=0) for i in range(1, 5)]


def _dice(a, b):
  return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_the_metabolic_lesion_is_not_the_one_flair_shows(patients):
  dice = [_dice(p.lesion >= 2, p.metabolic_lesion >= 2) for p in patients]
  assert all(d < 0.95 for d in dice) and np.mean(dice) < 0.85, dice
  # Choline follows the metabolic lesion: where only FLAIR shows tumour it is near the
  # healthy level, where only the metabolism does it is raised.
  cho = mrsi.METABOLITES.index("tCho")
  only_flair, only_metabolic, healthy = [], [], []
  for p in patients:
    tumour_a, tumour_m = p.lesion >= 2, p.metabolic_lesion >= 2
    healthy.append(p.maps[:, cho][p.quality & (p.lesion == 0) & (p.metabolic_lesion == 0)])
    only_flair.append(p.maps[:, cho][p.quality & tumour_a & (p.metabolic_lesion == 0)])
    only_metabolic.append(p.maps[:, cho][p.quality & tumour_m & (p.lesion == 0)])
  level = np.median(np.concatenate(healthy))
  assert sum(map(len, only_flair)) > 20 and sum(map(len, only_metabolic)) > 20
  assert np.median(np.concatenate(only_metabolic)) > 1.5 * level
  assert np.median(np.concatenate(only_flair)) < 1.3 * level


def test_some_metabolites_vary_where_the_anatomy_does_not(patients):
  # Gly and tCr follow the same GM/WM contrast (ratios 1.5 and 1.4), so in healthy tissue
  # their ratio (noise smoothed away) would be nearly constant if both followed the anatomy.
  gly, cr = mrsi.METABOLITES.index("Gly"), mrsi.METABOLITES.index("tCr")
  spreads = []
  for p in patients:
    smooth = lambda m: ndimage.gaussian_filter(p.maps[:, m], sigma=(0, 2, 2))
    keep = (ndimage.binary_erosion(p.quality, structure=np.ones((1, 5, 5), bool))
            & (p.lesion == 0) & (p.metabolic_lesion == 0))
    ratio = smooth(gly)[keep] / smooth(cr)[keep]
    spreads.append(np.std(np.log(ratio)))
  assert np.mean(spreads) > 0.15, spreads


def test_t1_and_flair_have_their_own_noise(patients):
  # The same patient without decoupling has the same T1/FLAIR before their blur and noise.
  decoupled, coupled = patients[0], mrsi.simulate_patient(1, seed=0, decoupled=False)
  np.testing.assert_array_equal(decoupled.lesion, coupled.lesion)
  inside = ndimage.binary_erosion(decoupled.brain, structure=np.ones((1, 3, 3), bool))
  fine = []
  for name in ("t1", "flair"):
    added = getattr(decoupled, name) - getattr(coupled, name)
    high_pass = added - ndimage.gaussian_filter(added, sigma=(0, 1.5, 1.5))
    fine.append(high_pass[inside])
    assert np.std(high_pass[inside]) > 0.005, name
  assert abs(np.corrcoef(*fine)[0, 1]) < 0.3  # each image's own noise, not a shared one


def test_quality_filter_rejects_the_skull_margin_and_a_random_fraction(patient):
  brain, quality = patient.brain, patient.quality
  assert 0.4 < quality.sum() / brain.sum() < 0.95
  # Rim voxels of the brain (within one voxel of its edge) are never kept.
  rim = brain & ~ndimage.binary_erosion(brain, structure=np.ones((1, 3, 3), bool))
  assert not (quality & rim).any()


def test_patients_are_deterministic_and_distinct(patient):
  again = mrsi.simulate_patient(0, seed=0)
  np.testing.assert_array_equal(again.maps, patient.maps)
  other = mrsi.simulate_patient(1, seed=0)
  assert other.maps.shape[2:] == patient.maps.shape[2:]
  assert not np.array_equal(other.lesion, patient.lesion[: len(other.lesion)])


def test_patients_are_cached_and_read_back_unchanged(tmp_path, patient):
  first = mrsi.load_patients(tmp_path, num_patients=1, seed=0)
  (folder,) = tmp_path.iterdir()
  assert sorted(p.name for p in folder.iterdir()) == ["p00.npz"]
  again = mrsi.load_patients(tmp_path, num_patients=1, seed=0)  # from the cache
  for loaded in (first[0], again[0]):
    assert loaded.name == "p00"
    np.testing.assert_array_equal(loaded.maps, patient.maps)
    np.testing.assert_array_equal(loaded.quality, patient.quality)
