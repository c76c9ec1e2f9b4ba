"""MRSI training examples: normalisation, augmentation, batches, and the study's run expansion."""

import numpy as np
import pytest

from configs import mrsi as mrsi_config
from jaxsr.mrsi import phantom as mrsi
from jaxsr.mrsi import pipeline as mrsi_pipeline
from jaxsr.mrsi.task import study_runs
from jaxsr.train.batches import training_batches


@pytest.fixture(scope="module")
def patients():
  return [mrsi.simulate_patient(i, seed=0) for i in range(2)]


def test_the_input_is_the_truncated_map_divided_by_its_own_percentile():
  rng = np.random.default_rng(0)
  acquired = rng.random((3, 64, 64)).astype(np.float32) * np.array([1.0, 10.0, 0.1])[:, None, None]
  n = np.array([16, 24, 32])
  lr, scale = mrsi_pipeline.lr_input(acquired, n)
  truncated = np.real(np.fft.ifft2(np.fft.fft2(acquired) * (
      (np.abs(np.fft.fftfreq(64) * 64)[None, :, None] < n[:, None, None] / 2)
      & (np.abs(np.fft.fftfreq(64) * 64)[None, None, :] < n[:, None, None] / 2))))
  expected_scale = np.percentile(truncated.reshape(3, -1), mrsi_pipeline.INPUT_PERCENTILE, axis=1)
  np.testing.assert_allclose(scale, expected_scale, rtol=1e-5)
  np.testing.assert_allclose(lr, truncated / expected_scale[:, None, None], rtol=1e-4, atol=1e-5)
  # The unit comes from the LR map alone: maps 10x apart give the same input.
  lr_a, _ = mrsi_pipeline.lr_input(acquired[:1], 20)
  lr_b, scale_b = mrsi_pipeline.lr_input(10 * acquired[:1], 20)
  np.testing.assert_allclose(lr_a, lr_b, rtol=1e-5, atol=1e-6)
  # An empty map keeps the scale 1 instead of dividing by zero.
  assert float(mrsi_pipeline.lr_input(np.zeros((64, 64), np.float32), 16)[1]) == 1.0


def test_examples_skip_slices_without_enough_quality_voxels(patients):
  rows = mrsi_pipeline.example_index(patients, metabolites=(0, 2))
  assert set(rows[:, 2]) == {0, 2}
  for p, s, _ in rows:
    assert patients[p].quality[s].sum() >= mrsi_pipeline.MIN_QUALITY_VOXELS
  usable = sum(int((pt.quality.sum(axis=(1, 2)) >= mrsi_pipeline.MIN_QUALITY_VOXELS).sum())
               for pt in patients)
  assert len(rows) == 2 * usable
  p, s, m = rows[3]
  example = mrsi_pipeline.example(patients, rows[3])
  # The acquired map as it is, rejected voxels included: the mask is not applied to it.
  np.testing.assert_array_equal(example["hr"], patients[p].maps[s, m])
  np.testing.assert_array_equal(example["mask"], patients[p].quality[s])
  rejected_brain = patients[p].brain[s] & ~patients[p].quality[s]
  assert np.all(example["hr"][rejected_brain] != 0)


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
