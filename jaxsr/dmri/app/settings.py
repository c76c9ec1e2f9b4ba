"""The defaults of `jaxsr upsample` and `jaxsr.upsample`: memory budget, output size limit,
back-projection, PSF and how many volumes of a series go through the model together.
"""

from __future__ import annotations


import jax

from jaxsr.dmri.degradation import acquisition


DEFAULT_MAX_MEMORY = 4 * 2**30  # bytes: the whole process, fits a laptop


DEFAULT_MAX_OUTPUT_VOXELS = 2**28  # per 3D volume: 1 GiB of float32


DEFAULT_BACK_PROJECTION = 3  # iterations; 0: the model's output as it is


DEFAULT_PSF = acquisition.AUTO  # chosen over the training degradation on the validation scans


def default_batch() -> int:
  """Volumes of a series super-resolved together at most: 1 on a CPU, where a batch is no
  faster per volume (docs/benchmarks.md) and costs memory; 8 on an accelerator, where one
  volume's programs are too small to fill it."""
  return 1 if jax.default_backend() == "cpu" else 8
