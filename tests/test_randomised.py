"""Domain-randomised training patches (`jaxsr.dmri.randomised`)."""

import numpy as np
import pytest

from jaxsr.dmri import psf, randomised


@pytest.fixture(scope="module")
def anatomy():
  return randomised.load_anatomy()


def test_hr_shapes_are_the_factor_pairs_but_one_to_one():
  shapes = randomised.hr_shapes(8, (1.0, 1.5, 2.0, 4.0))
  assert len(shapes) == 4 * 4 - 1 and (8, 8, 8) not in shapes
  assert (16, 16, 8) in shapes and (8, 8, 32) in shapes and (12, 12, 16) in shapes


def test_batches_have_a_drawn_shape_and_an_lr_made_by_one_of_the_psfs():
  sampler = randomised.RandomisedSampler(4, (1.0, 2.0, 3.0), psfs=("block", "kspace", "cubic"),
                                         lr_noise_fraction=0.0)
  seen = set()
  for seed in range(6):
    batch = sampler(np.arange(3), np.random.default_rng(seed))
    hr, lr = batch["hr"], batch["lr"]
    assert hr.dtype == lr.dtype == np.float32 and lr.shape == (3, 4, 4, 4)
    assert hr.shape[1:] in sampler.hr_shapes
    seen.add(hr.shape[1:])
    for h, l in zip(hr, lr):
      errors = [np.abs(psf.degrade(h, (4, 4, 4), k) - l).max() for k in ("block", "kspace", "cubic")]
      assert min(errors) < 1e-5
  assert len(seen) > 1


def test_patches_are_magnitude_images_with_noise_in_the_background(anatomy):
  rng = np.random.default_rng(3)
  for _ in range(8):
    patch = randomised.render_patch(anatomy, rng, (16, 16, 12))
    assert np.all(np.isfinite(patch)) and patch.min() >= 0
    assert np.count_nonzero(patch == 0) == 0  # magnitude noise everywhere, nothing masked


def test_the_same_seed_renders_the_same_patch_and_another_seed_another(anatomy):
  a = randomised.render_patch(anatomy, np.random.default_rng(5), (12, 12, 12))
  b = randomised.render_patch(anatomy, np.random.default_rng(5), (12, 12, 12))
  c = randomised.render_patch(anatomy, np.random.default_rng(6), (12, 12, 12))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_bad_settings_are_refused():
  with pytest.raises(psf.PSFError):
    randomised.RandomisedSampler(4, (1.0, 2.0), psfs=("sinc",))
  with pytest.raises(ValueError, match="axis_scales"):
    randomised.RandomisedSampler(4, (1.0,))
