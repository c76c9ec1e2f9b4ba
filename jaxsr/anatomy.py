"""Anatomy shared by both phantoms: the MNI ICBM152 2009a template, smooth random
fields and warps on world grids, and the scaling of anatomical images.

The template's T1 and GM/WM probability maps (1 mm) ship inside the nilearn wheel,
so nothing is downloaded. Grids are axis-aligned, affines voxel -> world mm (RAS+).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import nibabel as nib
import nibabel.affines
import nilearn
import numpy as np
from scipy import ndimage

from jaxsr import nifti

T1_PERCENTILE = 99.5  # anatomical images are divided by this percentile inside the brain


TEMPLATE_DIR = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


@dataclasses.dataclass(frozen=True)
class Template:
  """The MNI template cropped to the brain, 1 mm, all maps (X, Y, Z) float32 in [0, 1].

  `brain` is the filled intracranial region (brain tissue and CSF). `structure`
  (x, y, z, 6) is the structure tensor of the WM map (lower triangle xx, xy, yy, xz,
  yz, zz as in dipy; 1/mm²) on a 2 mm grid with affine `structure_affine`.
  """
  affine: np.ndarray
  t1: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  csf: np.ndarray
  brain: np.ndarray
  structure: np.ndarray
  structure_affine: np.ndarray

  def brain_bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """World (mm) corners of the brain's bounding box."""
    voxels = np.argwhere(self.brain > 0.5)
    return (nib.affines.apply_affine(self.affine, voxels.min(0)),
            nib.affines.apply_affine(self.affine, voxels.max(0)))


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
  """Reads the template from the nilearn wheel; derives CSF, brain region and WM structure."""
  images = {name: nib.load(os.path.join(TEMPLATE_DIR, TEMPLATE_FILE.format(name)))
            for name in ("t1", "gm", "wm")}
  tissue = sum(np.asarray(images[n].dataobj, np.float32) for n in ("gm", "wm")) / 255.0
  # Intracranial region: brain tissue with sulci closed by smoothing and ventricles filled.
  brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(tissue, 3.0) > 0.3)
  low, high = np.argwhere(brain).min(0), np.argwhere(brain).max(0)
  crop = tuple(slice(max(lo - 12, 0), hi + 13) for lo, hi in zip(low, high))
  maps = {n: np.asarray(images[n].slicer[crop].dataobj, np.float32) / 255.0 for n in images}
  brain = brain[crop].astype(np.float32)
  # CSF: what the tissue maps leave free inside the region, where the T1 is dark
  # (T1 ≈ 0.25 in the ventricles, 0.65 in GM on this template's [0, 1] scale).
  darkness = np.clip((0.6 - maps["t1"]) / 0.35, 0.0, 1.0)
  csf = brain * np.clip(1.0 - maps["gm"] - maps["wm"], 0.0, 1.0) * darkness
  affine = images["t1"].slicer[crop].affine
  # Structure tensor at 2 mm (gradient scale 1 mm, window 3 mm): smooth, so coarse is enough.
  wm_2mm = ndimage.gaussian_filter(maps["wm"], 0.85)[::2, ::2, ::2]
  structure = structure_tensor(wm_2mm, gradient_sigma=0.5, window_sigma=1.5) / 2.0**2
  return Template(affine=affine, t1=maps["t1"], gm=maps["gm"], wm=maps["wm"], csf=csf,
                  brain=brain, structure=structure, structure_affine=affine @ np.diag([2, 2, 2, 1]))


def structure_tensor(image: np.ndarray, gradient_sigma: float, window_sigma: float) -> np.ndarray:
  """(X, Y, Z, 6) structure tensor (xx, xy, yy, xz, yz, zz) of a 3D image; sigmas, units in voxels."""
  grads = [ndimage.gaussian_filter(image, gradient_sigma, order=np.eye(3, dtype=int)[a])
           for a in range(3)]
  pairs = ((0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2))
  return np.stack([ndimage.gaussian_filter(grads[i] * grads[j], window_sigma)
                   for i, j in pairs], axis=-1)


@functools.lru_cache(maxsize=10)
def prefiltered(name: str, voxel_size_mm: float) -> np.ndarray:
  """Template map `name` anti-aliased for sampling at `voxel_size_mm` (Gaussian, FWHM √(v² − 1) mm)."""
  sigma = np.sqrt(max(voxel_size_mm**2 - 1.0, 0.0)) / (2 * np.sqrt(2 * np.log(2)))
  return ndimage.gaussian_filter(getattr(load_template(), name), sigma)


@dataclasses.dataclass(frozen=True)
class SmoothField:
  """A random smooth field on world space: Gaussian bumps on a lattice with N(0, 1) weights.

  Per axis the bump weights are L2-normalised, so the field has unit standard
  deviation everywhere, and it is the same function of world position whichever
  grid it is evaluated on.
  """
  coefficients: np.ndarray  # (C, La, Lb, Lc)
  lattice: tuple[np.ndarray, np.ndarray, np.ndarray]  # world mm, per axis
  width_mm: float

  @classmethod
  def random(cls, rng: np.random.Generator, low: np.ndarray, high: np.ndarray,
             spacing_mm: float, num_components: int) -> "SmoothField":
    lattice = tuple(np.arange(lo - spacing_mm, hi + 2 * spacing_mm, spacing_mm)
                    for lo, hi in zip(low, high))
    coefficients = rng.standard_normal((num_components,) + tuple(len(a) for a in lattice))
    return cls(coefficients, lattice, spacing_mm)

  def on_grid(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(X, Y, Z, C) float32 values at the grid with world coordinates `axes` (mm, per axis)."""
    field = self.coefficients
    for x, centres in zip(axes, self.lattice):
      weights = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / self.width_mm) ** 2)
      weights /= np.linalg.norm(weights, axis=1, keepdims=True)
      field = np.tensordot(field, weights, axes=([1], [1]))  # contracted axis moves last
    return np.moveaxis(field, 0, -1).astype(np.float32)


def grid(low: np.ndarray, high: np.ndarray, voxel_size_mm: float,
         margin_voxels: int) -> tuple[tuple[int, int, int], np.ndarray]:
  """An axis-aligned grid (shape, affine) covering the world box [low, high] mm plus a margin."""
  origin = np.asarray(low, np.float64) - margin_voxels * voxel_size_mm
  shape = np.ceil((np.asarray(high) - low) / voxel_size_mm).astype(int) + 1 + 2 * margin_voxels
  return tuple(int(n) for n in shape), nib.affines.from_matvec(np.eye(3) * voxel_size_mm, origin)


def grid_axes(shape, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """World coordinates (mm) along each axis of an axis-aligned grid."""
  return tuple(affine[a, 3] + affine[a, a] * np.arange(n) for a, n in enumerate(shape))


def warp(maps: list[np.ndarray], maps_affine: np.ndarray, shape, affine,
          deformation: np.ndarray) -> list[np.ndarray]:
  """Samples maps (trilinear, 0 outside; voxel -> world `maps_affine`) at grid points x + deformation(x)."""
  matrix, offset = nib.affines.to_matvec(np.linalg.inv(maps_affine))
  world = [(axis.reshape([-1 if a == b else 1 for b in range(3)]) + deformation[..., a])
           for a, axis in enumerate(grid_axes(shape, affine))]
  coords = np.stack([sum(matrix[i, a] * world[a] for a in range(3)) + offset[i] for i in range(3)])
  return [ndimage.map_coordinates(m, coords, order=1, mode="constant", cval=0.0) for m in maps]


def normalise_t1(t1: np.ndarray, inside: np.ndarray, path: str, region: str) -> np.ndarray:
  """`t1` divided by its 99.5th percentile over the `inside` voxels, clipped to [0, 1], float32.

  Raises:
    DataError: naming `path`, when there is no positive signal in `region` (`inside`).
  """
  values = t1[inside]
  scale = np.percentile(values, T1_PERCENTILE) if values.size else 0.0
  if not scale > 0:
    raise nifti.DataError(f"{path}: no positive T1 signal inside {region}")
  return np.clip(t1 / scale, 0.0, 1.0).astype(np.float32)
