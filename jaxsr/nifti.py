"""NIfTI I/O, with validation that fails early and clearly.

Every bad input raises `DataError`, a one-line `ValueError` whose message starts
with the offending file. Volumes are float32 arrays indexed (X, Y, Z[, V]) in
voxels; affines map voxel indices to world coordinates in mm (RAS+, nibabel's
convention). Gradient tables: `jaxsr.dmri.data.btable`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Iterable

import nibabel as nib
import nibabel.affines
import nibabel.openers
import nibabel.processing
import numpy as np

from jaxsr import files
from jaxsr.errors import JaxsrError


class DataError(JaxsrError, ValueError):
  """A missing, malformed or inconsistent input file; the message is one line naming it."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class Volume:
  """A loaded NIfTI volume.

  Attributes:
    data: (X, Y, Z) or (X, Y, Z, V) float32, all finite.
    affine: (4, 4) voxel index -> world mm.
    header: the file's NIfTI header.
    path: the file it came from.
  """

  data: np.ndarray
  affine: np.ndarray
  header: nib.Nifti1Header
  path: str

  @property
  def voxel_size(self) -> np.ndarray:
    """(3,) voxel edge lengths in mm."""
    return nib.affines.voxel_sizes(self.affine)


@dataclasses.dataclass(frozen=True)
class LazyVolume:
  """A validated NIfTI file whose voxels are read one 3D volume at a time.

  Attributes:
    shape: (X, Y, Z) or (X, Y, Z, V), trailing singleton axes beyond the third dropped.
    affine: (4, 4) voxel index -> world mm.
    header: the file's NIfTI header.
    path: the file.
  """

  shape: tuple[int, ...]
  affine: np.ndarray
  header: nib.Nifti1Header
  path: str
  image: nib.Nifti1Image

  @property
  def num_volumes(self) -> int:
    """V for a 4D file, 1 for a 3D one."""
    return self.shape[3] if len(self.shape) == 4 else 1

  @property
  def voxel_size(self) -> np.ndarray:
    """(3,) voxel edge lengths in mm."""
    return nib.affines.voxel_sizes(self.affine)

  def volume(self, index: int = 0) -> np.ndarray:
    """The (X, Y, Z) float32 volume `index` (0 for a 3D file), scaled as the header says.

    Raises:
      DataError: unreadable data or non-finite voxels, naming the file.
    """
    try:
      with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf is reported below
        if len(self.shape) == 4:
          data = np.asarray(self.image.dataobj[:, :, :, index], dtype=np.float32)
        else:
          data = np.asarray(self.image.dataobj, dtype=np.float32)
    except Exception as e:  # truncated or corrupt data
      raise DataError(f"{self.path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    return _finite(data.reshape(self.shape[:3]), self.path,
                   f" in volume {index}" if len(self.shape) == 4 else "")


def _finite(data: np.ndarray, path: str, where: str = "") -> np.ndarray:
  """`data`, or DataError naming `path` (and `where` in it) if any voxel is NaN or inf."""
  num_bad = data.size - np.count_nonzero(np.isfinite(data))
  if num_bad:
    raise DataError(f"{path}: {num_bad} of {data.size} voxels{where} are not finite (NaN/inf)")
  return data


def open_volume(path: str | os.PathLike, ndim: int | None = None) -> LazyVolume:
  """Opens and validates a NIfTI-1/2 file without reading its voxels.

  Trailing singleton axes beyond the third are dropped.

  Args:
    path: the .nii or .nii.gz file.
    ndim: 3 or 4 to require that dimensionality (a 4D file of shape (X, Y, Z, 1) is 3D).

  Raises:
    DataError: missing or unreadable file, not a NIfTI, not 3D/4D (or not `ndim`-D),
      empty, complex-valued, or a singular/non-finite affine.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise DataError(f"{path}: a folder, not a NIfTI file (.nii or .nii.gz)")
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  try:
    # Kept open: reading a gzipped 4D file volume by volume then decompresses it once, not
    # once per volume (docs/scaling.md).
    image = nib.load(path, keep_file_open=True)
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
      raise DataError(f"{path}: not a NIfTI file (read as {type(image).__name__})")
    if np.issubdtype(image.get_data_dtype(), np.complexfloating):
      raise DataError(f"{path}: complex-valued data ({image.get_data_dtype()}); "
                      "give magnitude images")
    shape = tuple(int(n) for n in image.shape)
    affine = np.asarray(image.affine, dtype=np.float64)
  except DataError:
    raise
  except Exception as e:  # nibabel, gzip and numpy raise many types for corrupt files
    raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) not in (3, 4) or (ndim is not None and len(shape) != ndim):
    wanted = f"{ndim}D" if ndim is not None else "3D or 4D"
    raise DataError(f"{path}: expected a {wanted} volume, got {len(shape)}D shape {shape}")
  if 0 in shape:
    raise DataError(f"{path}: empty volume of shape {shape}")
  if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
    raise DataError(f"{path}: singular or non-finite voxel-to-world affine")
  return LazyVolume(shape=shape, affine=affine, header=image.header, path=path, image=image)


def load_volume(path: str | os.PathLike, ndim: int | None = None, *,
                require_finite: bool = True) -> Volume:
  """Loads a whole NIfTI-1/2 file as float32 (`open_volume`'s checks, then every voxel finite
  unless `require_finite` is False, for files that mark rejected voxels with NaN).

  Raises:
    DataError: as `open_volume`, or non-finite voxels.
  """
  lazy = open_volume(path, ndim)
  try:
    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
      warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf is reported below
      data = lazy.image.get_fdata(dtype=np.float32).reshape(lazy.shape)
  except Exception as e:  # truncated or corrupt data
    raise DataError(f"{lazy.path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
  return Volume(data=_finite(data, lazy.path) if require_finite else data, affine=lazy.affine,
                header=lazy.header, path=lazy.path)


def mask_on_grid(path: str | os.PathLike, shape: tuple[int, int, int],
                 affine: np.ndarray) -> np.ndarray:
  """A 3D mask file's values on the grid (shape, affine): as they are when it has that grid,
  else resampled by nearest neighbour through the affines. Returns (X, Y, Z) float32."""
  volume = load_volume(path, ndim=3)
  if volume.data.shape == tuple(shape) and np.allclose(volume.affine, affine, atol=1e-3):
    data = volume.data
  else:
    data = resample_to_grid(volume, tuple(shape), affine, order=0)
  return data


def resample_to_grid(volume: Volume, shape: tuple[int, int, int], affine: np.ndarray,
                     order: int = 3, mask: np.ndarray | None = None,
                     min_overlap: float = 0.5) -> np.ndarray:
  """Resamples a 3D volume onto another grid through both voxel-to-world affines.

  Args:
    volume: the 3D source.
    shape, affine: the target grid (X, Y, Z) and its voxel -> world mm affine.
    order: spline order (3: cubic, 1: trilinear, 0: nearest).
    mask: optional (X, Y, Z) target-grid mask; overlap is then measured on its voxels.
    min_overlap: the fraction of target (or mask) voxels that must fall inside the
      source field of view.

  Returns:
    (X, Y, Z) float32, 0 outside the source field of view.

  Raises:
    DataError: naming `volume.path`, when it is not 3D or does not overlap the target grid.
  """
  if volume.data.ndim != 3:
    raise DataError(f"{volume.path}: can only resample a 3D volume, got shape {volume.data.shape}")
  shape = tuple(int(n) for n in shape)
  voxels = np.argwhere(np.asarray(mask) > 0) if mask is not None else np.indices(shape).reshape(3, -1).T
  if len(voxels):
    target_to_source = np.linalg.inv(volume.affine) @ np.asarray(affine, np.float64)
    source_voxels = nib.affines.apply_affine(target_to_source, voxels)
    inside = np.all((source_voxels > -0.5) & (source_voxels < np.array(volume.data.shape) - 0.5),
                    axis=1)
    overlap = inside.mean()
    if overlap < min_overlap:
      what = "brain-mask" if mask is not None else "grid"
      raise DataError(f"{volume.path}: does not overlap the target grid: only {overlap:.0%} of "
                      f"the target {what} voxels fall inside its field of view")
  image = nib.Nifti1Image(volume.data, volume.affine)
  resampled = nib.processing.resample_from_to(image, (shape, affine), order=order, cval=0.0)
  return np.asarray(resampled.dataobj, dtype=np.float32)


def _output_header(affine: np.ndarray, header: nib.Nifti1Header | None) -> nib.Nifti1Header:
  """A header whose qform and sform are `affine`, with `header`'s codes (0 or none: 1 = scanner), mm."""
  out = nib.Nifti1Header()
  codes = (header["qform_code"], header["sform_code"]) if header is not None else (0, 0)
  out.set_qform(affine, code=int(codes[0]) or 1)
  out.set_sform(affine, code=int(codes[1]) or 1)
  time_unit = header.get_xyzt_units()[1] if header is not None else "unknown"
  out.set_xyzt_units(xyz="mm", t=time_unit)
  return out


def save_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray,
                header: nib.Nifti1Header | None = None) -> None:
  """Writes a NIfTI-1 file atomically (temp file in the same folder, then `os.replace`).

  The affine is stored as both qform and sform, with the codes of `header` (a zero
  code, or no header, becomes 1 = scanner so the affine is never lost); spatial
  units are mm. Boolean data is stored as uint8.
  """
  path = os.fspath(path)
  data = np.asarray(data)
  if data.dtype == bool:
    data = data.astype(np.uint8)
  image = nib.Nifti1Image(data, affine, header=header)
  image.set_data_dtype(data.dtype)
  codes = _output_header(affine, header)
  image.set_qform(affine, code=int(codes["qform_code"]))
  image.set_sform(affine, code=int(codes["sform_code"]))
  image.header.set_xyzt_units(*codes.get_xyzt_units())
  files.write_with(path, lambda temp: nib.save(image, temp))


class VolumeWriter:
  """Streams 3D volumes into a (X, Y, Z) or (X, Y, Z, V) NIfTI-1 file of `dtype` at `path`,
  as a context manager: `write(volume)` for each, in order (see `write_volumes`).

  Raises (from `write` or on leaving the block without an error):
    ValueError: a volume of the wrong shape, or not as many as `shape` says.
  """

  def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray,
               header: nib.Nifti1Header | None = None, repetition_time: float | None = None,
               dtype=np.float32):
    self.path, self.shape = os.fspath(path), tuple(shape)
    self.header = _output_header(affine, header)
    self.header.set_data_dtype(dtype)
    self.header.set_data_shape(shape)
    if len(shape) == 4:
      self.header.set_zooms(tuple(nib.affines.voxel_sizes(affine))
                            + (float(repetition_time or 1.0),))
    self.expected = shape[3] if len(shape) == 4 else 1
    self.count = 0

  def __enter__(self) -> "VolumeWriter":
    self._file = nib.openers.Opener(self.path, "wb")
    self._file.__enter__()
    self.header.write_to(self._file)
    self._file.write(b"\0" * (self.header.get_data_offset() - self._file.tell()))
    return self

  def write(self, volume: np.ndarray) -> None:
    volume = np.asarray(volume, dtype=self.header.get_data_dtype())
    if volume.shape != self.shape[:3] or self.count == self.expected:
      raise ValueError(f"{self.path}: volume {self.count} of shape {volume.shape} does not fit "
                       f"a {self.shape} image")
    self._file.write(volume.tobytes(order="F"))
    self.count += 1

  def __exit__(self, *error) -> None:
    self._file.__exit__(*error)
    if error[0] is None and self.count != self.expected:
      raise ValueError(f"{self.path}: {self.count} volumes written, {self.expected} expected")


def write_volumes(path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray,
                  volumes: Iterable[np.ndarray], header: nib.Nifti1Header | None = None,
                  repetition_time: float | None = None, dtype=np.float32) -> None:
  """Streams 3D volumes into a (X, Y, Z) or (X, Y, Z, V) NIfTI-1 file of `dtype` at `path`.

  NIfTI stores voxels in Fortran order, so each 3D volume of a 4D image is one
  contiguous run of bytes: they are written as `volumes` yields them and only
  one is in memory (gzip when `path` ends in .gz). qform/sform codes and the
  time unit come from `header` as in `save_volume`; `repetition_time` is the
  fourth pixdim of a 4D file. Not atomic: write to `jaxsr.files.temporary_path` and rename.

  Raises:
    ValueError: a volume of the wrong shape, or not as many as `shape` says.
  """
  with VolumeWriter(path, shape, affine, header, repetition_time, dtype) as writer:
    for volume in volumes:
      writer.write(volume)
