"""MRSI examples and training batches: one metabolite map of one slice, its LR input, augmented.

An example is map m of slice s of a patient (`jaxsr.mrsi.phantom.Patient`) with
the slice's T1, FLAIR and quality mask, all (64, 64). The map is the acquired
one, in mM, rejected voxels included as an acquisition has them; the quality
mask only says where the map is trusted, for the losses and the metrics, and
is never applied to what the network's input is made from. Slices whose
quality mask keeps fewer than `MIN_QUALITY_VOXELS` voxels are not used.

Normalisation (`lr_input`, the one function used in training, evaluation and
`jaxsr upsample-mrsi`): the LR map, on the 64 × 64 grid, is divided by its own
`INPUT_PERCENTILE`th percentile, computable from the acquisition alone; in
training the target is divided by the same number, and at deployment the output
is multiplied back.

Training batches (`MapSampler` + `jaxsr.train.batches.training_batches`, a
seeded grain pipeline whose position is checkpointed): each example is flipped,
rotated by a multiple of 90° and shifted by up to `max_shift` voxels (circularly,
as k-space sampling is), the four images alike, and gets its own matrix size n
drawn from `n_values`. The LR map is made from the HR one inside the train step
(`lr_input`), so the same code serves evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import kspace
from jaxsr.mrsi import phantom

MIN_QUALITY_VOXELS = 50
INPUT_PERCENTILE = 99.0  # of the LR map's voxels (64 x 64 grid): the input's unit
# A map whose percentile is not above this (in its units) has no signal: its scale is 1.
MIN_SCALE = 1e-6


def input_scale(lr: jax.Array) -> jax.Array:
  """(..., N, N) LR maps on the HR grid -> (...,) their normalising scale (see the module doc)."""
  scale = jnp.percentile(jnp.asarray(lr, jnp.float32), INPUT_PERCENTILE, axis=(-2, -1))
  return jnp.where(scale > MIN_SCALE, scale, 1.0)


def lr_input(acquired: jax.Array, n: jax.Array | int) -> tuple[jax.Array, jax.Array]:
  """(..., N, N) acquired maps -> (LR input divided by its scale, the scale (...,)).

  The LR map keeps the central n × n k-space of the acquired map (`kspace.truncate`).
  """
  lr = kspace.truncate(acquired, n)
  scale = input_scale(lr)
  return lr / scale[..., None, None], scale


def example_index(patients: Sequence[phantom.Patient], metabolites: Sequence[int] | None = None
                  ) -> np.ndarray:
  """(K, 3) int rows (patient, slice, metabolite) of the usable maps, in a fixed order."""
  metabolites = range(len(phantom.METABOLITES)) if metabolites is None else metabolites
  return np.array([(p, s, m) for p, patient in enumerate(patients)
                   for s in range(patient.quality.shape[0])
                   if patient.quality[s].sum() >= MIN_QUALITY_VOXELS
                   for m in metabolites], dtype=np.int64).reshape(-1, 3)


def example(patients: Sequence[phantom.Patient], row: Sequence[int]) -> dict[str, np.ndarray]:
  """The images of index row (patient, slice, metabolite): "hr" (the acquired map, mM), "t1",
  "flair", "mask" (the quality mask) (64, 64) float32 and "metabolite" (int32)."""
  p, s, m = (int(v) for v in row)
  patient = patients[p]
  return {"hr": patient.maps[s, m].astype(np.float32), "t1": patient.t1[s],
          "flair": patient.flair[s], "mask": patient.quality[s].astype(np.float32),
          "metabolite": np.int32(m)}


def augment(images: dict[str, np.ndarray], rng: np.random.Generator, max_shift: int
            ) -> dict[str, np.ndarray]:
  """The same random flip, 90° rotation and circular shift (≤ max_shift voxels) of every (H, W) image."""
  flips = rng.random(2) < 0.5
  turns = int(rng.integers(4))
  shift = rng.integers(-max_shift, max_shift + 1, size=2)

  def transform(image):
    for axis in np.flatnonzero(flips):
      image = np.flip(image, axis)
    return np.roll(np.rot90(image, turns), tuple(shift), axis=(0, 1))

  return {k: (np.ascontiguousarray(transform(v)) if np.ndim(v) == 2 else v)
          for k, v in images.items()}


@dataclasses.dataclass
class MapSampler:
  """Turns a batch of example indices into a training batch (the sampler of `training_batches`).

  Attributes:
    patients: the training patients.
    n_values: matrix sizes n (even, <= 64); each example draws one uniformly.
    max_shift: largest augmentation shift in voxels (0: none).
    augment: whether to flip/rotate/shift.
    metabolites: metabolite indices used (default all of `phantom.METABOLITES`).
  """
  patients: Sequence[phantom.Patient]
  n_values: Sequence[int]
  max_shift: int = 4
  augment: bool = True
  metabolites: Sequence[int] | None = None

  def __post_init__(self):
    self.rows = example_index(self.patients, self.metabolites)
    if not len(self.rows):
      raise ValueError("no slice of the training patients has enough quality-filtered voxels")
    size = self.patients[0].t1.shape[-1]
    bad = [n for n in self.n_values if n % 2 or not 2 <= n <= size]
    if bad or not len(self.n_values):
      raise ValueError(f"n_values must be even matrix sizes in [2, {size}], got "
                       f"{tuple(self.n_values)}")

  def __len__(self) -> int:
    return len(self.rows)

  def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{"hr", "t1", "flair", "mask": (B, 64, 64) float32, "n", "metabolite": (B,) int32}."""
    examples = []
    for index in np.asarray(indices):
      images = example(self.patients, self.rows[index])
      if self.augment:
        images = augment(images, rng, self.max_shift)
      images["n"] = np.int32(rng.choice(self.n_values))
      examples.append(images)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
