"""Domain-randomised training patches (`jaxsr.dmri.data.randomised`)."""

import numpy as np
import pytest

from jaxsr.dmri.degradation import psf
from jaxsr.dmri.data import randomised


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


def test_per_axis_psfs_degrade_in_plane_and_through_plane_apart():
  rng = np.random.default_rng(0)
  hr = rng.random((8, 8, 12)).astype(np.float32)
  kinds = set()
  for seed in range(40):
    low = randomised.random_degradation(np.random.default_rng(seed), hr, (4, 4, 4),
                                        ("block", "kspace"), per_axis=True)
    for in_plane in ("block", "kspace"):
      for through in ("block", "kspace"):
        step = psf.degrade(hr, (4, 4, 12), in_plane)
        plain = psf.degrade(step, (4, 4, 4), through)
        if np.abs(plain - low).max() < 1e-5:
          kinds.add((in_plane, through))
    if all(np.abs(psf.degrade(psf.degrade(hr, (4, 4, 12), a), (4, 4, 4), b) - low).max() > 1e-5
           for a in ("block", "kspace") for b in ("block", "kspace")):
      kinds.add("apodised")  # k-space with a window: none of the plain pairs
  assert {("kspace", "block"), ("block", "kspace"), "apodised"} <= kinds


def test_the_kspace_window_weights_the_kept_frequencies():
  plain = psf.axis_matrix("kspace", 32, 16)
  hamming = psf.axis_matrix("kspace", 32, 16, apodisation=0.46)
  x = np.cos(2 * np.pi * 7 * np.arange(32) / 32)  # frequency 7 of 8 kept: near the band edge
  ratio = np.abs(hamming @ x).max() / np.abs(plain @ x).max()
  np.testing.assert_allclose(ratio, 0.54 + 0.46 * np.cos(2 * np.pi * 7 / 16), rtol=1e-3)
  np.testing.assert_allclose(hamming @ np.ones(32), 1.0, rtol=1e-5)  # the mean is kept


def test_fine_texture_adds_detail_at_the_voxel_scale(anatomy):
  def high_band_energy(fine):
    total = 0.0
    for seed in range(6):
      patch = randomised.render_patch(anatomy, np.random.default_rng(seed), (24, 24, 24), fine)
      spectrum = np.abs(np.fft.fftn(patch - patch.mean())) ** 2
      f = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(24) ** 2] * 3, indexing="ij")))
      total += spectrum[(f > 0.15) & (f < 0.3)].sum() / spectrum.sum()
    return total
  assert high_band_energy(True) > high_band_energy(False)


def test_a_run_initialised_from_an_exported_model_starts_from_its_parameters(tmp_path):
  import jax

  from configs import general
  from jaxsr.dmri import step, task
  from jaxsr.dmri.app import pretrained
  from jaxsr.errors import ConfigError

  config = general.get_config("smoke")
  state = step.create_state(config, jax.random.key(0))
  other = step.create_state(config, jax.random.key(1))
  folder = pretrained.export(tmp_path / "m", config, other.params, step=0, source="test")
  warm = task.warm_started(state, str(folder))
  same = jax.tree_util.tree_map(lambda a, b: bool(np.all(np.asarray(a) == np.asarray(b))),
                                warm.params, other.params)
  assert all(jax.tree_util.tree_leaves(same))
  bigger = general.get_config("smoke")
  bigger.model.mlp_width = 48
  with pytest.raises(ConfigError, match="do not fit"):
    task.warm_started(step.create_state(bigger, jax.random.key(0)), str(folder))


def test_kspace_truncation_in_context_samples_a_band_limited_field_where_the_patch_alone_wraps():
  # A field band-limited over the padded grid: truncating its whole spectrum keeps it, so the
  # LR patch must be its samples at the LR centres; the patch's own (periodic) truncation is not.
  l, s, m = 8, 2.0, 4
  n = int((l + 2 * m) * s)
  x = np.arange(n)
  wave = lambda t: np.cos(2 * np.pi * 3 * t / n) + 0.5 * np.sin(2 * np.pi * 2 * t / n)
  field = np.broadcast_to(wave(x)[:, None, None], (n, 8, 8)).astype(np.float32).copy()
  hr, lr = randomised.degrade_in_context(field, (m, 0, 0), l,
                                         (randomised.Stage("kspace", (0,)),))
  assert hr.shape == (l * 2, 8, 8) and lr.shape == (l, 8, 8)
  centres = (np.arange(l) + 0.5) * s - 0.5 + m * s
  np.testing.assert_allclose(lr[:, 3, 3], wave(centres), atol=1e-5)
  np.testing.assert_array_equal(hr[:, 0, 0], field[m * 2:m * 2 + 2 * l, 0, 0])
  alone = psf.degrade(hr, (l, 8, 8), "kspace")
  assert np.abs(alone[:, 3, 3] - wave(centres)).max() > 0.05


def test_a_margin_goes_only_to_kspace_axes_that_are_degraded():
  stages = (randomised.Stage("kspace", (0, 1)), randomised.Stage("block", (2,)))
  assert randomised.kspace_margins(stages, (2.0, 2.0, 3.0), 4) == (4, 4, 0)
  assert randomised.kspace_margins(stages, (1.0, 1.0, 3.0), 4) == (0, 0, 0)
  sampler = randomised.RandomisedSampler(4, (1.0, 2.0), psfs=("kspace",), kspace_margin=2,
                                         lr_noise_fraction=0.0)
  batch = sampler(np.arange(2), np.random.default_rng(0))
  assert batch["lr"].shape == (2, 4, 4, 4) and batch["hr"].shape[1:] in sampler.hr_shapes
  with pytest.raises(ValueError, match="kspace_margin"):
    randomised.RandomisedSampler(4, (1.0, 1.5), kspace_margin=1)


def test_a_padded_patch_keeps_its_random_fields_as_smooth_per_voxel_as_the_patch_alone():
  # The k-space margin renders a larger patch and keeps its centre: the centre must look
  # like a patch of its own size, or its statistics would give the PSF draw away.
  roughness = lambda f: float(np.abs(np.diff(f, axis=1)).mean())  # along x
  alone = np.mean([roughness(randomised.smooth_field(np.random.default_rng(i), (16, 16, 16), 6))
                   for i in range(20)])
  controls = randomised.field_controls(6, (32, 32, 16), frame=(16, 16, 16))
  assert controls == (12, 12, 6) and randomised.field_controls(6, (16, 16, 16), None) == 6
  padded = np.mean([roughness(randomised.smooth_field(np.random.default_rng(i), (32, 32, 16),
                                                      controls)[:, 8:24]) for i in range(20)])
  assert abs(padded / alone - 1) < 0.25  # spread over the padded extent it would be about 0.5
