"""Training batches of any task as a seeded, checkpointable grain pipeline.

Element i of the pipeline is batch i: its examples come from a seeded shuffle of
the sampler's indices, repeated over epochs, and its random content (crop
positions, scales, augmentation) from a numpy Generator that grain derives from
the seed and i. The iterator state (the position) is saved in checkpoints, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import grain


def training_batches(sampler, *, batch_size: int, seed: int,
                     shard_index: int = 0, num_shards: int = 1,
                     num_threads: int = 2, prefetch: int = 4) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of training batches (numpy dicts).

  `sampler` is any `len()`-able callable `(indices, rng) -> batch dict` (a task's
  training examples, e.g. `jaxsr.dmri.patches.PatchSampler`).

  `batch_size` is the per-process batch; process `shard_index` of `num_shards`
  reads every num_shards-th batch of the global sequence, so hosts never overlap.
  """
  dataset = (
      grain.MapDataset.range(len(sampler))
      .shuffle(seed=seed)
      .repeat(None)
      .batch(batch_size, drop_remainder=True)
      .random_map(sampler, seed=seed)
  )[shard_index::num_shards]
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))
