"""How a scan is super-resolved, beside which scan and onto which grid: `UpsampleSettings`, one
object threaded through `jaxsr.dmri.app.upsample`, `upsample_files` and `volumes`, and the
defaults of `jaxsr upsample` and `jaxsr.upsample`."""

from __future__ import annotations

import dataclasses

import jax

from jaxsr.dmri.app import adapt as adapt_lib
from jaxsr.dmri.app import uncertainty as uncertainty_lib
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


@dataclasses.dataclass(frozen=True)
class UpsampleSettings:
  """How to super-resolve (see `jaxsr.dmri.app.upsample.upsample` for each in full).

  Attributes:
    max_memory: bytes for the whole process (the memory plan's budget).
    max_output_voxels: larger output grids (per 3D volume) are refused.
    back_projection: iterations of data consistency with the input.
    psf: the input's PSF: "auto" (decided on the scan), one name or three (x, y, z), or None
      (the training degradation); `acquisition.psf_option` form.
    adapt: adaptation to the scan, or None.
    batch: volumes through the model together at most (None: `default_batch()`).
    uncertainty: a method of `jaxsr.dmri.app.uncertainty.METHODS`, or None.
  """
  max_memory: int = DEFAULT_MAX_MEMORY
  max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS
  back_projection: int = DEFAULT_BACK_PROJECTION
  psf: str | tuple[str, str, str] | None = DEFAULT_PSF
  adapt: adapt_lib.AdaptSettings | None = None
  batch: int | None = None
  uncertainty: str | None = None

  def __post_init__(self):  # bad values fail here, before any work
    object.__setattr__(self, "psf", acquisition.psf_option(self.psf))
    if self.uncertainty is not None:
      uncertainty_lib.check_method(self.uncertainty)

  @property
  def adapting(self) -> bool:
    return self.adapt is not None and self.adapt.steps > 0
