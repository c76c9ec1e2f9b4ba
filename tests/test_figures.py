"""Figures are written as PNGs with the expected panels, insets, colorbars and labels."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from jaxsr.dmri import figures

SHAPE = (24, 28, 20)


def _phantom():
  """(truth, mask): a smooth image in [0, 1] and a spherical bool mask, both (24, 28, 20)."""
  x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
  mask = x ** 2 + y ** 2 + z ** 2 < 0.8
  truth = 0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y) + 0.2 * z
  return truth * mask, mask


def _methods(truth, count):
  """`count` noisy copies of `truth`, the noise growing with the method index."""
  rng = np.random.default_rng(0)
  return {f"m{i}": truth + 0.02 * (i + 1) * rng.normal(size=SHAPE) for i in range(count)}


def _num_axes(fig):
  """Main axes, colorbars and inset axes of `fig`."""
  return len(fig.axes) + sum(len(ax.child_axes) for ax in fig.axes)


def _texts(ax):
  return [t.get_text() for t in ax.texts]


def test_slice_comparison_png_widens_with_methods(tmp_path):
  truth, mask = _phantom()
  shapes = {}
  for count in (1, 3):
    path = tmp_path / "nested" / f"slices_{count}.png"
    figures.slice_comparison(_methods(truth, count), truth, mask, {}, path, title="T1 ×4")
    shapes[count] = imread(path).shape
  (h1, w1, _), (h3, w3, _) = shapes[1], shapes[3]
  assert h1 == h3
  assert w3 / w1 == pytest.approx(4 / 2, rel=0.01)  # methods + truth columns


def test_slice_comparison_panels_insets_and_scores():
  truth, mask = _phantom()
  volumes = _methods(truth, 2)
  fig = figures._slice_comparison_figure(volumes, truth, mask, {"m0": (31.254, 0.91234)},
                                         title="T1")
  assert _num_axes(fig) == 2 * 3 * 3  # (2 methods + truth) × 3 views, one inset each
  axes = np.array(fig.axes).reshape(3, 3)
  assert [ax.get_title() for ax in axes[0]] == ["m0", "m1", "HR truth"]
  for row in axes:
    assert _texts(row[0]) == ["PSNR 31.25 dB / SSIM 0.9123"]
    assert _texts(row[1]) == [] and _texts(row[2]) == []  # m1 unscored; truth never labelled
    limits = {(ax.child_axes[0].get_xlim(), ax.child_axes[0].get_ylim()) for ax in row}
    assert len(limits) == 1  # the same zoom region in every column
    (x0, x1), (y0, y1) = limits.pop()
    h, w = row[0].get_images()[0].get_array().shape
    assert x1 - x0 == pytest.approx(0.3 * min(h, w)) and y1 - y0 == pytest.approx(x1 - x0)
    assert 0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h


def test_zoom_box_centres_the_region():
  truth, mask = _phantom()
  fig = figures._slice_comparison_figure(_methods(truth, 1), truth, mask, {}, title="T1",
                                         zoom_box=(0.5, 0.5), zoom_size=0.25)
  axial = fig.axes[0]
  h, w = axial.get_images()[0].get_array().shape
  assert (h, w) == (SHAPE[1], SHAPE[0])
  inset = axial.child_axes[0]
  assert np.mean(inset.get_xlim()) == pytest.approx(w / 2)
  assert np.mean(inset.get_ylim()) == pytest.approx(h / 2)


def test_fa_comparison(tmp_path):
  _, mask = _phantom()
  rng = np.random.default_rng(1)
  fa_truth = rng.uniform(0, 1, SHAPE)
  fa = {"a": np.clip(fa_truth + 0.05, 0, 1), "b": fa_truth}
  fig = figures._fa_comparison_figure(fa, fa_truth, mask, title="FA", rmse={"a": 0.05})
  assert _num_axes(fig) == 2 * 3 + 1  # 2 views × (2 methods + truth), one colorbar
  assert _texts(fig.axes[0]) == ["FA RMSE 0.0500"] and _texts(fig.axes[1]) == []
  assert fig.axes[0].get_images()[0].get_array()[0, 0] == 0  # outside the mask
  path = tmp_path / "fa.png"
  figures.fa_comparison(fa, fa_truth, mask, path, title="FA")
  h, w, _ = imread(path).shape
  assert w > h


def test_error_maps(tmp_path):
  truth, mask = _phantom()
  volumes = {"perfect": truth.copy(), "noisy": _methods(truth, 1)["m0"]}
  fig = figures._error_maps_figure(volumes, truth, mask, title="errors")
  assert _num_axes(fig) == 3 * 2 + 1  # 3 views × 2 methods, one colorbar
  assert fig.axes[-1].get_ylabel() == "|error|"
  axes = np.array(fig.axes[:-1]).reshape(3, 2)
  noisy_mae = float(np.abs(volumes["noisy"] - truth)[mask].mean())
  for row in axes:
    assert _texts(row[0]) == ["MAE 0.0000"]
    assert _texts(row[1]) == [f"MAE {noisy_mae:.4f}"] and noisy_mae > 0.01
    assert not row[0].get_images()[0].get_array().any()
  path = tmp_path / "errors.png"
  figures.error_maps(volumes, truth, mask, path, title="errors")
  assert imread(path).ndim == 3


@pytest.mark.parametrize("plot", [
    lambda v, t, m, p: figures.slice_comparison(v, t, m, {}, p, title="x"),
    lambda v, t, m, p: figures.fa_comparison(v, t, m, p, title="x"),
    lambda v, t, m, p: figures.error_maps(v, t, m, p, title="x"),
], ids=["slice_comparison", "fa_comparison", "error_maps"])
def test_invalid_inputs_raise(plot, tmp_path):
  truth, mask = _phantom()
  path = tmp_path / "x.png"
  with pytest.raises(ValueError, match="shape"):
    plot({"a": truth[:-1]}, truth, mask, path)
  with pytest.raises(ValueError, match="shape"):
    plot({"a": truth}, truth, mask[:, :-1], path)
  with pytest.raises(ValueError, match="mask is empty"):
    plot({"a": truth}, truth, np.zeros(SHAPE, bool), path)
  with pytest.raises(ValueError, match="empty"):
    plot({}, truth, mask, path)
  assert not path.exists()
