"""MRSI training examples: normalisation, augmentation, batches, and the study's run expansion."""

import numpy as np
import pytest

from configs import mrsi as mrsi_config
from jaxsr.data import mrsi, mrsi_pipeline
from jaxsr.data.pipeline import training_batches
from jaxsr.train.mrsi_task import study_runs


@pytest.fixture(scope="module")
def patients():
  return [mrsi.simulate_patient(i, seed=0) for i in range(2)]


def test_maps_are_divided_by_their_peak_inside_the_quality_mask():
  values = np.array([[1.0, 4.0], [2.0, 9.0]])
  quality = np.array([[True, True], [True, False]])
  normalised, peak = mrsi_pipeline.normalise_map(values, quality)
  assert peak == 4.0
  np.testing.assert_allclose(normalised, [[0.25, 1.0], [0.5, 0.0]])
  with pytest.raises(ValueError, match="keeps no voxel"):
    mrsi_pipeline.normalise_map(values, np.zeros((2, 2), bool))
  with pytest.raises(ValueError, match="not positive"):
    mrsi_pipeline.normalise_map(-values, quality)


def test_examples_skip_slices_without_enough_quality_voxels(patients):
  rows = mrsi_pipeline.example_index(patients, metabolites=(0, 2))
  assert set(rows[:, 2]) == {0, 2}
  for p, s, _ in rows:
    assert patients[p].quality[s].sum() >= mrsi_pipeline.MIN_QUALITY_VOXELS
  usable = sum(int((pt.quality.sum(axis=(1, 2)) >= mrsi_pipeline.MIN_QUALITY_VOXELS).sum())
               for pt in patients)
  assert len(rows) == 2 * usable
  example = mrsi_pipeline.example(patients, rows[3])
  assert example["hr"].shape == (64, 64) and example["hr"].max() == pytest.approx(1.0)
  assert np.all(example["hr"][example["mask"] == 0] == 0)


def test_augmentation_moves_every_image_alike_and_keeps_values():
  rng = np.random.default_rng(0)
  base = rng.random((16, 16)).astype(np.float32)
  images = {"hr": base, "t1": base * 2, "flair": base + 1, "mask": (base > 0.5) * 1.0,
            "metabolite": np.int32(3)}
  seen = set()
  for seed in range(12):
    out = mrsi_pipeline.augment(images, np.random.default_rng(seed), max_shift=3)
    np.testing.assert_allclose(out["t1"], out["hr"] * 2, rtol=1e-6)
    np.testing.assert_allclose(out["flair"], out["hr"] + 1, rtol=1e-6)
    np.testing.assert_array_equal(out["mask"], (out["hr"] > 0.5) * 1.0)
    np.testing.assert_allclose(np.sort(out["hr"], axis=None), np.sort(base, axis=None))
    assert out["metabolite"] == 3
    seen.add(out["hr"].tobytes())
  assert len(seen) > 6  # flips, rotations and shifts give different images
  still = mrsi_pipeline.augment(images, np.random.default_rng(0), max_shift=0)
  assert any(np.array_equal(still["hr"], np.rot90(f, k)) for k in range(4)
             for f in (base, base[::-1], base[:, ::-1], base[::-1, ::-1]))


def test_batches_mix_n_and_metabolites_and_are_reproducible(patients):
  sampler = mrsi_pipeline.MapSampler(patients, n_values=(16, 20, 24, 28, 32), max_shift=2)
  first = next(training_batches(sampler, batch_size=8, seed=3, num_threads=0))
  again = next(training_batches(sampler, batch_size=8, seed=3, num_threads=0))
  assert first["hr"].shape == first["t1"].shape == first["mask"].shape == (8, 64, 64)
  assert first["n"].dtype == np.int32 and set(first["n"]) <= {16, 20, 24, 28, 32}
  assert len(set(first["n"])) > 1 and len(set(first["metabolite"])) > 1
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  with pytest.raises(ValueError, match="even matrix sizes"):
    mrsi_pipeline.MapSampler(patients, n_values=(15,))


def test_the_study_expands_into_one_run_per_network():
  config = mrsi_config.get_config("smoke")
  config.folds = (0, 2)
  runs = study_runs(config)
  per_fold = ["single_scale_n16", "single_scale_n24", "unconditioned", "amlayer", "hypernetwork",
              "filter_scaling", "filter_scaling_met", "sharpness_filter_scaling_met"]
  assert list(runs) == [f"fold{f}/{name}" for f in (0, 2) for name in per_fold]
  single = runs["fold2/single_scale_n24"]
  assert single.data.n_values == (24,) and single.model.conditioning == "none"
  assert single.data.fold == 2 and not single.train.adversarial
  sharp = runs["fold0/sharpness_filter_scaling_met"]
  assert sharp.train.adversarial and sharp.model.conditioning == "filter_scaling_met"
  assert "methods" not in runs["fold0/amlayer"] and runs["fold0/amlayer"].model.kind == "mrsi_unet"
  config.methods = ("unconditioned", "nonsense")
  with pytest.raises(ValueError, match="unknown MRSI methods"):
    study_runs(config)
