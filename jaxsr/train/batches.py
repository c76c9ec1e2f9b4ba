"""Training batches of any task as a seeded, checkpointable grain pipeline.

Element i of the pipeline is batch i: its examples come from a seeded shuffle of
the sampler's indices, repeated over epochs, and its random content (crop
positions, scales, augmentation) from a numpy Generator that grain derives from
the seed and i. The iterator state (the position) is saved in checkpoints, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools

import grain


def training_batches(sampler, *, batch_size: int, seed: int, shard_index: int = 0,
                     num_shards: int = 1, num_threads: int = 2,
                     prefetch: int = 4) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of training batches (numpy dicts).

  `sampler` is any `len()`-able callable `(indices, rng) -> batch dict` (a task's
  training examples, e.g. `jaxsr.dmri.data.patches.PatchSampler`).

  `batch_size` is the global batch. Process `shard_index` of `num_shards` gets its
  `batch_size / num_shards` rows of every global batch: each process draws the
  whole batch from the batch's own random stream (one scale, crop positions, ...)
  and keeps its rows, so the processes' rows fit together (same shapes) and the
  global batch is the one a single process would train on.
  """
  if batch_size % num_shards:
    raise ValueError(f"batch size {batch_size} does not split over {num_shards} processes")
  draw = sampler if num_shards == 1 else functools.partial(
      _rows_of_shard, sampler, shard_index, num_shards)
  dataset = (
      grain.MapDataset.range(len(sampler))
      .shuffle(seed=seed)
      .repeat(None)
      .batch(batch_size, drop_remainder=True)
      .random_map(draw, seed=seed)
  )
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))


def _rows_of_shard(sampler, shard_index: int, num_shards: int, indices, rng) -> dict:
  """Shard `shard_index`'s rows of the global batch `sampler(indices, rng)`."""
  batch = sampler(indices, rng)
  rows = len(indices) // num_shards
  return {k: v[shard_index * rows:(shard_index + 1) * rows] for k, v in batch.items()}
