"""Figure conventions shared by both families: panel sizes, image panels, labels, saving.

Figures are built on `matplotlib.figure.Figure` (no pyplot, no display) and saved
as files at `DPI`, atomically (`jaxsr.files`).
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from jaxsr import files

DPI = 150


PANEL_INCHES = 2.2  # width and height of one panel


TITLE_INCHES = 0.4  # extra height for the suptitle


COLORBAR_INCHES = 0.8  # extra width for a colorbar


ZOOM_COLOUR = "#ffcc00"


def show(ax: Axes, image: np.ndarray, **imshow_kwargs):
  """Shows an (H, W) image with pixel edges at integer coordinates (x in [0, W], y in [0, H])."""
  h, w = image.shape
  ax.set_xticks([])
  ax.set_yticks([])
  return ax.imshow(image, origin="lower", aspect="equal", extent=(0, w, 0, h), **imshow_kwargs)


def label(ax: Axes, text: str) -> None:
  """Small white text on a dark box at the bottom of a panel."""
  ax.text(0.5, 0.02, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=6,
          color="white", bbox=dict(facecolor="black", alpha=0.7, edgecolor="none", pad=1.5))


def save(fig: Figure, path) -> None:
  """Saves `fig` at `DPI`, creating the parent folders of `path`."""
  path = pathlib.Path(path)
  with files.write_errors(path.parent):
    path.parent.mkdir(parents=True, exist_ok=True)
  files.write_with(path, lambda temp: fig.savefig(temp, dpi=DPI, format=path.suffix[1:] or "png"))
