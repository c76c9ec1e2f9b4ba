"""The output grid of a request: voxel size, scale or shape over the input's field of view.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import nibabel as nib
import numpy as np

from jaxsr import geometry
from jaxsr.dmri.app.settings import DEFAULT_MAX_OUTPUT_VOXELS
from jaxsr.errors import UpsampleError


@dataclasses.dataclass(frozen=True)
class OutputGrid:
  """The output grid: `shape` voxels per axis and the (4, 4) voxel -> world mm `affine`."""
  shape: tuple[int, int, int]
  affine: np.ndarray

  @property
  def voxel_size(self) -> np.ndarray:
    return nib.affines.voxel_sizes(self.affine)


def output_grid(lr_shape: Sequence[int], lr_affine: np.ndarray, *,
                voxel_size=None, scale=None, shape=None,
                max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS) -> OutputGrid:
  """`geometry.output_shape` and `geometry.output_affine`, refusing grids over `max_output_voxels`.

  Raises:
    UpsampleError: a bad request (see `geometry.output_shape`), or an output over the size limit.
  """
  try:
    hr_shape = geometry.output_shape(lr_shape, lr_affine, voxel_size=voxel_size, scale=scale,
                                     out_shape=shape)
  except ValueError as e:
    raise UpsampleError(str(e)) from e
  if math.prod(hr_shape) > max_output_voxels:
    raise UpsampleError(f"the output grid {hr_shape} has {math.prod(hr_shape):,} voxels per "
                     f"volume, over the limit of {max_output_voxels:,} (raise it with "
                     "--max-output-voxels if this is meant)")
  return OutputGrid(hr_shape, geometry.output_affine(lr_affine, lr_shape, hr_shape))
