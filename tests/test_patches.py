"""Training patches (`jaxsr.dmri.data.patches`) and their batches (`jaxsr.train.batches`)."""

import types

import numpy as np
import pytest

from jaxsr.dmri.data.patches import PatchSampler, hr_patch_sizes
from jaxsr.train.batches import training_batches


def fake_subject(name, shape=(36, 34, 32), volumes=3, mask=None):
  """DWI voxel values encode their own position: x*1e4 + y*1e2 + z + volume*1e6."""
  x, y, z = np.indices(shape)
  t1 = (x * 1e4 + y * 1e2 + z).astype(np.float32)
  dwi = np.stack([t1 + v * 1e6 for v in range(volumes)], axis=-1)
  return types.SimpleNamespace(name=name, dwi=dwi, t1=t1,
                               mask=np.ones(shape, bool) if mask is None else mask)


def test_hr_patch_sizes_paper_default():
  assert hr_patch_sizes(10, 2.0, 3.0, 11) == tuple(range(20, 31))
  assert hr_patch_sizes(10, 2.0, 3.0, 3) == (20, 25, 30)
  with pytest.raises(ValueError):
    hr_patch_sizes(10, 3.0, 2.0, 3)


def test_batches_are_contiguous_crops_of_dwi_and_matching_t1():
  sampler = PatchSampler([fake_subject("a"), fake_subject("b")], hr_sizes=(8, 10, 12), patch_size=16)
  iterator = training_batches(sampler, batch_size=3, seed=0)
  seen_sizes = set()
  for _ in range(10):
    batch = next(iterator)
    hr, t1 = batch["hr"], batch["t1"]
    assert hr.shape == t1.shape and hr.shape[0] == 3 and hr.dtype == np.float32
    m = hr.shape[1]
    assert hr.shape[1:] == (m, m, m) and m in (8, 10, 12)
    seen_sizes.add(m)
    i, j, k = np.indices((m, m, m))
    for b in range(3):
      np.testing.assert_array_equal(t1[b] - t1[b, 0, 0, 0], i * 1e4 + j * 1e2 + k)
      offset = hr[b] - t1[b]  # one volume of the same window
      assert np.all(offset == offset[0, 0, 0]) and offset[0, 0, 0] in (0, 1e6, 2e6)
  assert len(seen_sizes) > 1


def test_crops_stay_near_the_brain():
  mask = np.zeros((60, 60, 60), bool)
  mask[50:55, 50:55, 50:55] = True
  sampler = PatchSampler([fake_subject("a", (60, 60, 60), 1, mask)], hr_sizes=(10,), patch_size=16)
  batch = next(training_batches(sampler, batch_size=4, seed=3))
  corners = np.stack([np.unravel_index(int(b[0, 0, 0]), (100, 100, 100)) for b in batch["t1"]])
  assert np.all(corners >= 50 - 16) and np.all(corners + 10 <= 60)


def test_iterator_state_resumes_the_same_sequence():
  sampler = PatchSampler([fake_subject("a"), fake_subject("b")], hr_sizes=(8, 10), patch_size=16)
  reference = training_batches(sampler, batch_size=2, seed=5)
  expected = [next(reference)["hr"] for _ in range(6)]
  first = training_batches(sampler, batch_size=2, seed=5)
  for _ in range(3):
    next(first)
  state = first.get_state()
  resumed = training_batches(sampler, batch_size=2, seed=5)
  resumed.set_state(state)
  for want in expected[3:]:
    np.testing.assert_array_equal(next(resumed)["hr"], want)
  other_seed = next(training_batches(sampler, batch_size=2, seed=6))["hr"]
  assert not (other_seed.shape == expected[0].shape and np.array_equal(other_seed, expected[0]))


def test_processes_read_their_rows_of_the_one_process_batches():
  """Two processes' rows of each global batch, put together, are the batch one process reads
  (same scale and crops: the rows of a step fit one global array)."""
  sampler = PatchSampler([fake_subject(str(i), volumes=4) for i in range(3)], hr_sizes=(8, 10),
                         patch_size=8)
  full = training_batches(sampler, batch_size=4, seed=1)
  shards = [training_batches(sampler, batch_size=4, seed=1, shard_index=i, num_shards=2)
            for i in range(2)]
  for _ in range(4):
    reference = next(full)
    parts = [next(shard) for shard in shards]
    for key in reference:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), reference[key])
  with pytest.raises(ValueError, match="does not split over 3 processes"):
    training_batches(sampler, batch_size=4, seed=1, num_shards=3)


def test_too_small_volume_is_a_clear_error():
  with pytest.raises(ValueError, match="smaller than the largest HR patch"):
    PatchSampler([fake_subject("tiny", (20, 20, 20))], hr_sizes=(30,))
