"""dMRI figures: orthogonal slices of SR volumes with zoomed insets, FA maps, error maps,
upsample previews.

Volumes are numpy (X, Y, Z) float arrays in RAS+ voxel order (x: left→right,
y: posterior→anterior, z: inferior→superior) on the grid of the HR truth, and
`mask` is the (X, Y, Z) bool brain mask. Each view shows one slice through the
centre of the mask's bounding box, displayed with `origin="lower"` so that
anterior/superior is up: axial vol[:, :, k].T, sagittal vol[i, :, :].T,
coronal vol[:, j, :].T. Panels and saving follow `jaxsr.plotting`.
"""

from __future__ import annotations

import nibabel as nib
import nibabel.affines
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jaxsr import plotting
from jaxsr.plotting import COLORBAR_INCHES, PANEL_INCHES, TITLE_INCHES, ZOOM_COLOUR, save, show

TRUTH_LABEL = "HR truth"
VIEWS = ("axial", "sagittal", "coronal")


def _check_inputs(volumes: dict[str, np.ndarray], truth: np.ndarray, mask: np.ndarray,
                  name: str) -> None:
  """Raises ValueError unless `volumes` is non-empty and every array has the mask's (X, Y, Z) shape."""
  if not volumes:
    raise ValueError(f"{name} is empty: nothing to plot")
  if np.ndim(mask) != 3:
    raise ValueError(f"mask must be a 3D (X, Y, Z) array, got shape {np.shape(mask)}")
  arrays = {"truth": truth, **{f"{name}[{key!r}]": v for key, v in volumes.items()}}
  for key, array in arrays.items():
    if np.shape(array) != np.shape(mask):
      raise ValueError(f"{key} has shape {np.shape(array)}, expected the mask's {np.shape(mask)}")
  if not np.any(mask):
    raise ValueError("mask is empty: no voxel to centre slices on or compute statistics in")


def _centre(mask: np.ndarray) -> np.ndarray:
  """(i, j, k) voxel indices of the centre of the mask's bounding box."""
  idx = np.argwhere(mask)
  return (idx.min(axis=0) + idx.max(axis=0)) // 2


def _slice(vol: np.ndarray, view: str, centre: np.ndarray) -> np.ndarray:
  """The (H, W) display image of `view` through `centre`, to show with origin="lower".

  axial (Y, X), sagittal (Z, Y), coronal (Z, X).
  """
  i, j, k = centre
  return {"axial": vol[:, :, k], "sagittal": vol[i, :, :], "coronal": vol[:, j, :]}[view].T


def _zoom_region(mask2d: np.ndarray, zoom_box: tuple[float, float] | None,
                 zoom_size: float) -> tuple[float, float, float]:
  """Lower-left corner and side (x0, y0, side) of the square zoom region of an (H, W) panel, in voxels.

  The side is `zoom_size` × min(H, W). The centre is `zoom_box` (u, v) as fractions of
  the panel width and height, or by default the mask's centre of mass in the slice
  moved a quarter of the way towards the top-right corner (the panel centre if the
  slice holds no mask voxel). The region is kept inside the panel.
  """
  h, w = mask2d.shape
  side = zoom_size * min(h, w)
  if zoom_box is not None:
    cx, cy = zoom_box[0] * w, zoom_box[1] * h
  elif mask2d.any():
    rows, cols = np.nonzero(mask2d)
    cx, cy = cols.mean() + 0.5, rows.mean() + 0.5
    cx, cy = cx + 0.25 * (w - cx), cy + 0.25 * (h - cy)
  else:
    cx, cy = w / 2, h / 2
  return float(np.clip(cx - side / 2, 0, w - side)), float(np.clip(cy - side / 2, 0, h - side)), side


def _zoom(ax: Axes, image: np.ndarray, region: tuple[float, float, float], **imshow_kwargs) -> None:
  """Outlines `region` (x0, y0, side) on the panel and shows it enlarged in a top-right inset."""
  x0, y0, side = region
  ax.add_patch(Rectangle((x0, y0), side, side, fill=False, edgecolor=ZOOM_COLOUR, linewidth=0.8))
  inset = ax.inset_axes([0.6, 0.6, 0.38, 0.38])
  show(inset, image, **imshow_kwargs)
  inset.set_xlim(x0, x0 + side)
  inset.set_ylim(y0, y0 + side)
  for spine in inset.spines.values():
    spine.set_edgecolor(ZOOM_COLOUR)
    spine.set_linewidth(1.2)


def _grid(views: tuple[str, ...], columns: list[str], title: str,
          extra_width: float = 0.0) -> tuple[Figure, np.ndarray]:
  """Figure of (len(views), len(columns)) panels with column titles and row labels; returns (fig, axes)."""
  fig = Figure(figsize=(PANEL_INCHES * len(columns) + extra_width,
                        PANEL_INCHES * len(views) + TITLE_INCHES), layout="constrained")
  axes = fig.subplots(len(views), len(columns), squeeze=False)
  fig.suptitle(title)
  for c, name in enumerate(columns):
    axes[0, c].set_title(name, fontsize=9)
  for r, view in enumerate(views):
    axes[r, 0].set_ylabel(view, fontsize=9)
  return fig, axes


def _slice_comparison_figure(volumes: dict[str, np.ndarray], truth: np.ndarray, mask: np.ndarray,
                             scores: dict[str, tuple[float, float]], *, title: str,
                             zoom_box: tuple[float, float] | None = None,
                             zoom_size: float = 0.3) -> Figure:
  """The figure of `slice_comparison`: 3 × (methods + 1) panels, each with one zoom inset."""
  _check_inputs(volumes, truth, mask, "volumes")
  if not 0 < zoom_size <= 1:
    raise ValueError(f"zoom_size must be in (0, 1], got {zoom_size}")
  mask = np.asarray(mask, bool)
  centre = _centre(mask)
  window = dict(cmap="gray", vmin=0.0, vmax=float(np.percentile(truth[mask], 99.5)))
  columns = [*volumes.items(), (TRUTH_LABEL, truth)]
  fig, axes = _grid(VIEWS, [name for name, _ in columns], title)
  for r, view in enumerate(VIEWS):
    region = _zoom_region(_slice(mask, view, centre), zoom_box, zoom_size)
    for c, (name, vol) in enumerate(columns):
      image = _slice(vol, view, centre)
      show(axes[r, c], image, **window)
      _zoom(axes[r, c], image, region, **window)
      if c < len(volumes) and name in scores:
        psnr, ssim = scores[name]
        plotting.label(axes[r, c], f"PSNR {psnr:.2f} dB / SSIM {ssim:.4f}")
  return fig


def slice_comparison(volumes: dict[str, np.ndarray], truth: np.ndarray, mask: np.ndarray,
                     scores: dict[str, tuple[float, float]], path, *, title: str,
                     zoom_box: tuple[float, float] | None = None, zoom_size: float = 0.3) -> None:
  """Saves the qualitative comparison figure: axial, sagittal and coronal slices of each method and the truth.

  Rows are the three views through the centre of the mask's bounding box; columns
  are the methods in `volumes` order, then the HR truth. All panels share the
  intensity window [0, 99.5th percentile of `truth` in `mask`]. Each panel has an
  inset enlarging a square region (outlined on the panel, the same in every
  column of a row), and each method with `scores` is labelled with its PSNR and SSIM.

  Args:
    volumes: method name -> (X, Y, Z) float SR volume on the truth's grid.
    truth: (X, Y, Z) float HR volume.
    mask: (X, Y, Z) bool brain mask.
    scores: method name -> (PSNR in dB, SSIM); methods missing here get no label.
    path: output image file (e.g. .png); parent folders are created.
    title: figure title.
    zoom_box: centre (u, v) of the zoom region as fractions in [0, 1] of the panel
      width and height; None: the slice's mask centre of mass moved a quarter of
      the way towards the top-right corner.
    zoom_size: side of the zoom region as a fraction of the panel's shorter side.

  Raises:
    ValueError: empty `volumes` or `mask`, or a shape differing from the mask's.
  """
  save(_slice_comparison_figure(volumes, truth, mask, scores, title=title, zoom_box=zoom_box,
                                 zoom_size=zoom_size), path)


def _fa_comparison_figure(fa: dict[str, np.ndarray], fa_truth: np.ndarray, mask: np.ndarray, *,
                          title: str, rmse: dict[str, float] | None = None) -> Figure:
  """The figure of `fa_comparison`: 2 × (methods + 1) panels and one colorbar."""
  _check_inputs(fa, fa_truth, mask, "fa")
  mask = np.asarray(mask, bool)
  centre = _centre(mask)
  rmse = rmse or {}
  views = ("axial", "coronal")
  columns = [*fa.items(), (TRUTH_LABEL, fa_truth)]
  fig, axes = _grid(views, [name for name, _ in columns], title, extra_width=COLORBAR_INCHES)
  for r, view in enumerate(views):
    for c, (name, vol) in enumerate(columns):
      image = show(axes[r, c], _slice(np.where(mask, vol, 0.0), view, centre),
                    cmap="gray", vmin=0.0, vmax=1.0)
      if c < len(fa) and name in rmse:
        plotting.label(axes[r, c], f"FA RMSE {rmse[name]:.4f}")
  fig.colorbar(image, ax=axes, shrink=0.8, label="FA")
  return fig


def fa_comparison(fa: dict[str, np.ndarray], fa_truth: np.ndarray, mask: np.ndarray, path, *,
                  title: str, rmse: dict[str, float] | None = None) -> None:
  """Saves the FA map comparison figure: axial and coronal FA slices of each method and the truth.

  FA (dimensionless, in [0, 1]) is shown in gray on [0, 1], 0 outside `mask`, with
  one colorbar; slices go through the centre of the mask's bounding box.

  Args:
    fa: method name -> (X, Y, Z) FA map of the SR volumes.
    fa_truth: (X, Y, Z) FA map of the HR truth.
    mask: (X, Y, Z) bool brain mask.
    path: output image file; parent folders are created.
    title: figure title.
    rmse: method name -> FA RMSE in the mask, written on that method's panels.

  Raises:
    ValueError: empty `fa` or `mask`, or a shape differing from the mask's.
  """
  save(_fa_comparison_figure(fa, fa_truth, mask, title=title, rmse=rmse), path)


def _error_maps_figure(volumes: dict[str, np.ndarray], truth: np.ndarray, mask: np.ndarray, *,
                       title: str) -> Figure:
  """The figure of `error_maps`: 3 × methods panels and one colorbar."""
  _check_inputs(volumes, truth, mask, "volumes")
  mask = np.asarray(mask, bool)
  centre = _centre(mask)
  errors = {name: np.where(mask, np.abs(vol - truth), 0.0) for name, vol in volumes.items()}
  vmax = float(np.percentile(np.concatenate([e[mask] for e in errors.values()]), 99))
  fig, axes = _grid(VIEWS, list(errors), title, extra_width=COLORBAR_INCHES)
  for c, (name, error) in enumerate(errors.items()):
    mae = float(error[mask].mean())
    for r, view in enumerate(VIEWS):
      image = show(axes[r, c], _slice(error, view, centre), cmap="inferno", vmin=0.0, vmax=vmax)
      plotting.label(axes[r, c], f"MAE {mae:.4f}")
  fig.colorbar(image, ax=axes, shrink=0.8, label="|error|")
  return fig


def error_maps(volumes: dict[str, np.ndarray], truth: np.ndarray, mask: np.ndarray, path, *,
               title: str) -> None:
  """Saves the absolute error maps |volume − truth| of each method in axial, sagittal and coronal slices.

  Errors are in the volumes' intensity units, 0 outside `mask`, on one shared
  inferno scale [0, 99th percentile of all methods' errors in `mask`] with one
  colorbar; each panel is labelled with the method's mean absolute error in `mask`.

  Args:
    volumes: method name -> (X, Y, Z) float SR volume on the truth's grid.
    truth: (X, Y, Z) float HR volume.
    mask: (X, Y, Z) bool brain mask.
    path: output image file; parent folders are created.
    title: figure title.

  Raises:
    ValueError: empty `volumes` or `mask`, or a shape differing from the mask's.
  """
  save(_error_maps_figure(volumes, truth, mask, title=title), path)


def _view_extent(view: str, shape: tuple[int, ...], voxel: np.ndarray) -> tuple[float, ...]:
  """imshow extent (mm) of a `_slice` of `view` on a grid of `shape` voxels of size `voxel`."""
  width_axis, height_axis = {"axial": (0, 1), "sagittal": (1, 2), "coronal": (0, 2)}[view]
  return (0.0, shape[width_axis] * voxel[width_axis], 0.0, shape[height_axis] * voxel[height_axis])


def upsample_preview(lr: np.ndarray, lr_affine: np.ndarray, hr: np.ndarray,
                     hr_affine: np.ndarray, path, *, title: str = "") -> None:
  """Input (top row) and super-resolved output (bottom row): axial, sagittal, coronal slices.

  `lr` (x, y, z) and `hr` (X, Y, Z) cover one field of view; both rows cut the
  same planes (through the input's central voxels) and are drawn in mm along the
  voxel axes, so anisotropic voxels keep their true proportions; the input is
  shown as blocks (nearest), the output anti-aliased to the figure's pixels. One
  grey scale: 0 to the input's 99.5th percentile.
  """
  if np.ndim(lr) != 3 or np.ndim(hr) != 3:
    raise ValueError(f"expected two 3D volumes, got shapes {np.shape(lr)} and {np.shape(hr)}")
  centre = np.asarray(lr.shape) // 2
  hr_centre = np.round((centre + 0.5) * np.asarray(hr.shape) / np.asarray(lr.shape) - 0.5)
  rows = {"input": (lr, lr_affine, centre, "nearest"),
          "output": (hr, hr_affine, hr_centre.astype(int), "antialiased")}
  positive = lr[lr > 0]
  window = dict(cmap="gray", vmin=0.0,
                vmax=float(np.percentile(positive, 99.5)) if positive.size else 1.0)
  fig = Figure(figsize=(PANEL_INCHES * len(VIEWS), PANEL_INCHES * len(rows) + TITLE_INCHES),
               layout="constrained")
  axes = fig.subplots(len(rows), len(VIEWS), squeeze=False)
  fig.suptitle(title)
  for r, (name, (volume, affine, index, interpolation)) in enumerate(rows.items()):
    voxel = nib.affines.voxel_sizes(affine)
    label = f"{name}: {volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]}, " + \
        "×".join(f"{v:.3g}" for v in voxel) + " mm"
    for c, view in enumerate(VIEWS):
      ax = axes[r, c]
      ax.imshow(_slice(volume, view, index), origin="lower", aspect="equal",
                extent=_view_extent(view, volume.shape, voxel), interpolation=interpolation,
                **window)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(view, fontsize=9)
      plotting.label(ax, label)
  save(fig, path)


