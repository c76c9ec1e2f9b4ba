"""Training examples for CSR-dMRI: random HR patches at random scales.

One training example is an HR crop of one b-shell DWI volume of one subject and
the co-registered T1 crop (both on the DWI grid). The LR input is made from the
crop inside the jitted train step (`jaxsr.dmri.degradation.degrade.degrade`), so the
pipeline only slices arrays, and the same degradation serves evaluation.

Scale sampling and compilation: the paper draws s ~ U(2, 3) and crops an HR
patch of (10·s)^3 voxels for an LR patch of 10^3. A new HR size means a new
XLA program, so s is drawn from `num_scale_buckets` evenly spaced values in
[scale_min, scale_max], rounded so that the HR size M = lr_patch_size · s is an
integer, and one s is used for a whole batch. The train step then compiles at
most `len(hr_patch_sizes(...))` times over a run (11 with the defaults, M = 20..30).

Batch i's (subject, volume) pairs, scale and crop positions are drawn by
`jaxsr.train.batches` (seeded, resumable) through `PatchSampler`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def hr_patch_sizes(lr_patch_size: int, scale_min: float, scale_max: float,
                   num_scale_buckets: int) -> tuple[int, ...]:
  """The HR patch edge lengths (voxels) that training uses, one per scale bucket."""
  if not 0 < scale_min <= scale_max:
    raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
  if num_scale_buckets < 1:
    raise ValueError(f"num_scale_buckets must be >= 1, got {num_scale_buckets}")
  scales = np.linspace(scale_min, scale_max, num_scale_buckets)
  return tuple(sorted({int(round(lr_patch_size * s)) for s in scales}))


@dataclasses.dataclass
class PatchSampler:
  """Turns a batch of (subject, volume) pair indices into a batch of HR crops.

  Attributes:
    subjects: training subjects (`jaxsr.dmri.data.subjects.Subject`), each with
      `dwi` (X, Y, Z, K), `t1` (X, Y, Z) and `mask` (X, Y, Z).
    hr_sizes: candidate HR patch edge lengths M (voxels); one is drawn per batch.
    patch_size: edge of the region (voxels) around a random brain voxel from which
      the M^3 crop is taken (40 in the paper).
  """

  subjects: Sequence
  hr_sizes: Sequence[int]
  patch_size: int = 40

  def __post_init__(self):
    self.pairs = np.array([(s, v) for s, subj in enumerate(self.subjects)
                           for v in range(subj.dwi.shape[-1])], dtype=np.int64)
    self.brain_voxels = [np.argwhere(np.asarray(s.mask)) for s in self.subjects]
    for subj, voxels in zip(self.subjects, self.brain_voxels):
      if len(voxels) == 0:
        raise ValueError(f"subject {subj.name}: empty brain mask")
      if max(self.hr_sizes) > min(subj.mask.shape):
        raise ValueError(f"subject {subj.name}: grid {subj.mask.shape} is smaller than the "
                         f"largest HR patch {max(self.hr_sizes)}^3; use smaller patches or voxels")

  def __len__(self) -> int:
    return len(self.pairs)

  def _corner(self, s: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Corner of a size^3 crop inside a patch_size^3 region centred on a random brain voxel."""
    shape = np.array(self.subjects[s].mask.shape)
    region = np.minimum(max(self.patch_size, size), shape)
    centre = self.brain_voxels[s][rng.integers(len(self.brain_voxels[s]))]
    region_start = np.clip(centre - region // 2, 0, shape - region)
    return region_start + rng.integers(0, region - size + 1)

  def __call__(self, pair_indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Returns {'hr': (B, M, M, M), 't1': (B, M, M, M)} float32 crops and 'scale' (B,) = M / lr size."""
    size = int(rng.choice(self.hr_sizes))
    hr, t1 = [], []
    for s, v in self.pairs[np.asarray(pair_indices)]:
      x, y, z = self._corner(s, size, rng)
      window = (slice(x, x + size), slice(y, y + size), slice(z, z + size))
      hr.append(np.asarray(self.subjects[s].dwi[window + (v,)], dtype=np.float32))
      t1.append(np.asarray(self.subjects[s].t1[window], dtype=np.float32))
    return {"hr": np.stack(hr), "t1": np.stack(t1)}


