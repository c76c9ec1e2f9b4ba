"""MRSI figures: condition-study heat maps, sharpness curves and rows of 2D maps."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jaxsr.plotting import COLORBAR_INCHES, PANEL_INCHES, TITLE_INCHES, ZOOM_COLOUR, save, show


def condition_heatmap(matrix: np.ndarray, labels: list[str], x_label: str, y_label: str, path,
                      *, title: str) -> None:
  """A heat map of square `matrix`[condition, input] (e.g. SSIM), each cell annotated with its
  value and coloured by its difference from the matched condition (the diagonal) of its
  column, each input's best condition outlined."""
  matrix = np.asarray(matrix, float)
  relative = matrix - np.diag(matrix)[None, :]
  limit = max(float(np.abs(relative).max()), 1e-6)
  size = max(3.0, 0.55 * len(labels) + 1.5)
  fig = Figure(figsize=(size + COLORBAR_INCHES, size), layout="constrained")
  ax = fig.subplots()
  image = ax.imshow(relative, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower")
  fig.colorbar(image, ax=ax, shrink=0.8, label="difference from the matched condition")
  ax.set_xticks(range(len(labels)), labels, fontsize=8)
  ax.set_yticks(range(len(labels)), labels, fontsize=8)
  ax.set_xlabel(x_label)
  ax.set_ylabel(y_label)
  ax.set_title(title, fontsize=9)
  for (i, j), value in np.ndenumerate(matrix):
    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6,
            color="white" if abs(relative[i, j]) > 0.6 * limit else "black")
  for j, i in enumerate(matrix.argmax(axis=0)):
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=ZOOM_COLOUR, lw=1.5))
  save(fig, path)


def sharpness_curves(table: list[dict], path, *, title: str) -> None:
  """PSNR, SSIM, gradient sharpness and high-frequency ratio against λ (rows of
  `jaxsr.mrsi.evaluation.sharpness_study`); the sharpness panels mark the truth's level, 1."""
  lam = [r["lambda"] for r in table]
  keys = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("gradient_sharpness", "gradient sharpness"),
          ("high_frequency_ratio", "high-frequency energy ratio"))
  fig = Figure(figsize=(4 * PANEL_INCHES, PANEL_INCHES + TITLE_INCHES), layout="constrained")
  axes = fig.subplots(1, len(keys))
  fig.suptitle(title)
  for ax, (key, label) in zip(axes, keys):
    ax.plot(lam, [r[key] for r in table], "o-")
    if key in ("gradient_sharpness", "high_frequency_ratio"):
      ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_xlabel("λ")
    ax.set_title(label, fontsize=9)
  save(fig, path)


def map_rows(rows: list[tuple[str, dict[str, np.ndarray], dict[str, str]]], path, *,
             title: str) -> None:
  """Rows of 2D maps: (row label, {column: (H, W) image}, {column: caption}); each row's maps
  share the grey scale of its "truth" column (the others use their own range)."""
  columns = list(rows[0][1])
  fig = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * len(rows) + TITLE_INCHES),
               layout="constrained")
  axes = fig.subplots(len(rows), len(columns), squeeze=False)
  fig.suptitle(title, fontsize=9)
  for r, (label, panels, captions) in enumerate(rows):
    high = float(np.max(panels["truth"])) if "truth" in panels else None
    for c, column in enumerate(columns):
      image = panels[column]
      scaled = column not in ("FLAIR",) and high is not None
      show(axes[r, c], image.T, cmap="gray", vmin=0 if scaled else None,
            vmax=high if scaled else None)
      if r == 0:
        axes[r, c].set_title(column, fontsize=9)
      if column in captions:
        axes[r, c].set_xlabel(captions[column], fontsize=7)
    axes[r, 0].set_ylabel(label, fontsize=8)
  save(fig, path)
