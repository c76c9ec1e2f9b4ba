"""The HTML report of a `jaxsr upsample` run: one self-contained file a user opens first.

`write_report` renders `templates/report.html.j2` (jinja2) with the run's sidecar record
(model, grids, settings, PSF, time per stage), a figure per volume shown (three planes
through the input's centre; columns: the input as acquired, tricubic, jaxsr, jaxsr −
tricubic, the uncertainty) and, with `--adapt`, the adaptation's decision and held-out
curve. Figures are matplotlib PNGs embedded as base64, so the file needs no network and no
folder beside it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import importlib.metadata
import io
import os

import jinja2
import nibabel as nib
import nibabel.affines
import numpy as np
from matplotlib.figure import Figure

from jaxsr import files
from jaxsr.dmri.degradation import psf as psf_lib

VIEWS = ("axial", "sagittal", "coronal")
COLUMNS = ("input (nearest)", "tricubic", "jaxsr", "jaxsr − tricubic", "uncertainty")
PANEL_INCHES = 2.0
DPI = 100  # a 3D report of two figures stays far under 3 MB

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("jaxsr.dmri", "templates"),
                                autoescape=True, undefined=jinja2.StrictUndefined)


@dataclasses.dataclass(frozen=True)
class ShownVolume:
  """A volume the report shows: its name, the (x, y, z) input, the (X, Y, Z) output and its
  uncertainty (or None)."""
  name: str
  lr: np.ndarray
  output: np.ndarray
  uncertainty: np.ndarray | None = None


def _plane(volume: np.ndarray, view: str, index: np.ndarray) -> np.ndarray:
  """The (H, W) image of `view` through voxel `index`, to draw with origin="lower"."""
  i, j, k = index
  return {"axial": volume[:, :, k], "sagittal": volume[i, :, :],
          "coronal": volume[:, j, :]}[view].T


def _extent(view: str, shape, voxel) -> tuple[float, float, float, float]:
  """imshow extent in mm of a `_plane` of `view` on a grid of `shape` voxels of size `voxel`."""
  w, h = {"axial": (0, 1), "sagittal": (1, 2), "coronal": (0, 2)}[view]
  return (0.0, shape[w] * voxel[w], 0.0, shape[h] * voxel[h])


def _png(fig: Figure) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def _cubic_planes(lr: np.ndarray, hr_shape, index) -> dict[str, np.ndarray]:
  """`_plane`s of `tricubic_upsample(lr, hr_shape)` through HR voxel `index`, each made from
  the 1D cubic matrices (separable), without interpolating the whole volume."""
  mx, my, mz = (psf_lib.cubic_resize_matrix(n, m) for n, m in zip(hr_shape, lr.shape))
  i, j, k = index
  volume = {"axial": np.einsum("xyz,z->xy", lr, mz[k]), "sagittal": np.einsum("xyz,x->yz", lr, mx[i]),
            "coronal": np.einsum("xyz,y->xz", lr, my[j])}
  full = {"axial": mx @ volume["axial"] @ my.T, "sagittal": my @ volume["sagittal"] @ mz.T,
          "coronal": mx @ volume["coronal"] @ mz.T}
  return {view: plane.T for view, plane in full.items()}


def volume_figure(shown: ShownVolume, lr_affine: np.ndarray, hr_affine: np.ndarray) -> str:
  """Base64 PNG: rows axial / sagittal / coronal through the input's centre; columns
  `COLUMNS`, in mm along the voxel axes (anisotropic voxels keep their proportions). Only the
  three planes are computed (tricubic's too), so the figure costs little beside the run."""
  lr, out = np.asarray(shown.lr, np.float32), np.asarray(shown.output, np.float32)
  centre = np.asarray(lr.shape) // 2
  hr_centre = np.round((centre + 0.5) * np.asarray(out.shape) / np.asarray(lr.shape) - 0.5)
  hr_centre = np.clip(hr_centre.astype(int), 0, np.asarray(out.shape) - 1)
  planes = {"input": {v: _plane(lr, v, centre) for v in VIEWS},
            "tricubic": _cubic_planes(lr, out.shape, hr_centre),
            "jaxsr": {v: _plane(out, v, hr_centre) for v in VIEWS}}
  planes["difference"] = {v: planes["jaxsr"][v] - planes["tricubic"][v] for v in VIEWS}
  if shown.uncertainty is not None:
    planes["uncertainty"] = {v: _plane(shown.uncertainty, v, hr_centre) for v in VIEWS}

  def top(name, q=99.5):
    values = np.concatenate([np.abs(p).ravel() for p in planes[name].values()])
    return max(float(np.percentile(values, q)), 1e-12)
  grey = dict(cmap="gray", vmin=0, vmax=top("input"))
  spread = top("difference")
  unc_top = top("uncertainty") if "uncertainty" in planes else 1.0
  lr_voxel = nib.affines.voxel_sizes(lr_affine)
  hr_voxel = nib.affines.voxel_sizes(hr_affine)
  columns = [("input (nearest)", "input", lr.shape, lr_voxel, "nearest", grey),
             ("tricubic", "tricubic", out.shape, hr_voxel, "antialiased", grey),
             ("jaxsr", "jaxsr", out.shape, hr_voxel, "antialiased", grey),
             (f"jaxsr − tricubic (±{spread:.3g})", "difference", out.shape, hr_voxel,
              "antialiased", dict(cmap="RdBu_r", vmin=-spread, vmax=spread)),
             (f"uncertainty (0–{unc_top:.3g})", "uncertainty", out.shape, hr_voxel,
              "antialiased", dict(cmap="magma", vmin=0, vmax=unc_top))]
  fig = Figure(figsize=(PANEL_INCHES * len(COLUMNS), PANEL_INCHES * len(VIEWS) + 0.4))
  # A fixed grid: a layout engine would cost more than drawing the panels.
  axes = fig.subplots(len(VIEWS), len(COLUMNS), squeeze=False,
                      gridspec_kw=dict(left=0.03, right=0.99, bottom=0.01, top=0.9,
                                       wspace=0.04, hspace=0.06))
  fig.suptitle(shown.name)
  for c, (title, name, shape, voxel, interpolation, window) in enumerate(columns):
    for r, view in enumerate(VIEWS):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title, fontsize=9)
      if c == 0:
        ax.set_ylabel(view, fontsize=9)
      if name not in planes:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes,
                fontsize=8, color="0.4")
        continue
      ax.imshow(planes[name][view], origin="lower", aspect="equal",
                extent=_extent(view, shape, voxel), interpolation=interpolation, **window)
  return _png(fig)


def adaptation_figure(adapt: dict) -> str | None:
  """Base64 PNG of the stopping set's held-out loss over the adaptation's steps, with the
  deciding set's before and after, or None without a history."""
  heldout = np.asarray(adapt.get("heldout_history") or [], np.float64)
  if heldout.size == 0:
    return None
  fig = Figure(figsize=(6.0, 3.2), layout="constrained")
  ax = fig.subplots()
  ax.plot(heldout[:, 0], heldout[:, 1], marker="o", label="held-out loss (stopping set)")
  ax.axhline(adapt["heldout_loss_before"], color="tab:red", linestyle="--",
             label="deciding set, before")
  ax.axhline(adapt["heldout_loss_after"], color="tab:green", linestyle="--",
             label="deciding set, after")
  if adapt.get("best_step"):
    ax.axvline(adapt["best_step"], color="0.3", linestyle=":", label="step chosen")
  ax.set_xlabel("step")
  ax.set_ylabel("mean absolute error")
  ax.legend(fontsize=7)
  return _png(fig)


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, (list, tuple)):
    return " × ".join(_format(v) for v in value)
  return str(value)


def _run_rows(record: dict) -> list[tuple[str, str]]:
  model, inp, out, settings = (record["model"], record["input"], record["output"],
                               record["settings"])
  psf = record.get("psf", {})
  rows = [("input file", inp["file"]),
          ("input grid", f"{_format(inp['shape'])} voxels of {_format(inp['voxel_size_mm'])} mm"),
          ("output grid", f"{_format(out['shape'])} voxels of {_format(out['voxel_size_mm'])} mm "
                          f"(scale {_format(out['scale'])})"),
          ("model", f"{model['source']} (kind {model['kind']}, step {model['step']})"),
          ("model weights SHA-256", model["params_sha256"]),
          ("PSF", (f"{_format(psf.get('per_axis') or 'training degradation')} "
                   f"({psf.get('mode', 'given')})") if psf
           else "not decided: no volume reached the model (all blank)"),
          ("back-projection iterations", settings["back_projection"]),
          ("adaptation steps asked", settings["adapt_steps"]),
          ("uncertainty", settings.get("uncertainty") or "not asked for"),
          ("jaxsr version", record["GeneratedBy"]["Version"])]
  return [(name, _format(value)) for name, value in rows]


STAGES = {"plan": "memory plan and compilation", "adapt": "adaptation (--adapt)",
          "volumes": "super-resolving the volumes",
          "written": "volumes computed and written (writing overlaps computing)",
          "report": "this report"}


def _timing_rows(record: dict) -> list[tuple[str, str]]:
  """(stage, seconds) of the sidecar's "timing" (`jaxsr.dmri.app.upsample_files`), in order."""
  timing = record.get("timing", {})
  rows = [(label, f"{timing[key]:.2f}") for key, label in STAGES.items() if key in timing]
  return rows + [("from the plan to the written files", f"{record['seconds']:.2f}")]


def _adapt_context(adapt: dict | None) -> dict | None:
  if not adapt:
    return None
  rows = [("decision", "kept" if adapt["kept"] else "not kept: the shipped model is used"),
          ("held-out loss before → after", f"{adapt['heldout_loss_before']:.4g} → "
                                           f"{adapt['heldout_loss_after']:.4g}"),
          ("step chosen / run / asked", f"{adapt['best_step']} / {adapt['steps_run']} / "
                                        f"{adapt['steps_asked']}"),
          ("volumes adapted on", ", ".join(map(str, adapt.get("volumes", [])))),
          ("PSF trained with", _format(adapt.get("psf") or "drawn per crop"))]
  transfer = adapt.get("transfer_check")
  if transfer:
    rows.append(("transfer check", "passed" if transfer.get("passed") else
                 f"failed: {transfer.get('reason', '')}"))
  consistency = adapt.get("consistency_check")
  if consistency:
    rows.append(("raw output against the scan (residual before → after)",
                 f"{consistency['residual_before']:.4g} → {consistency['residual_after']:.4g}: "
                 + ("passed" if consistency["passed"] else "failed, not kept")))
  return {"kept": adapt["kept"], "message": adapt.get("message", ""), "rows": rows,
          "png": adaptation_figure(adapt)}


def section(record: dict, shown: list[ShownVolume], lr_affine: np.ndarray,
            hr_affine: np.ndarray, name: str) -> dict:
  """One scan's part of a report: its run, time per stage, figures and adaptation, from its
  sidecar `record` and the volumes to show (figures rendered here, as base64 PNGs)."""
  uncertain = any(s.uncertainty is not None for s in shown)
  return {
      "name": name,
      "run_rows": _run_rows(record),
      "timing_rows": _timing_rows(record),
      "panels": [{"name": s.name, "png": volume_figure(s, lr_affine, hr_affine)} for s in shown],
      "uncertainty_note": (
          "the expected absolute error of the output, in its units (calibrated on real "
          "validation scans, docs/uncertainty.md). Bright where the output depends on what the "
          "input cannot tell: the acquisition's point-spread function, or detail above the "
          "input's band that no measurement checks; trust the output least there. It ranks "
          "errors only roughly (rank correlation about 0.3 on real scans)." if uncertain else
          "not computed for this run."),
      "adapt": _adapt_context(record.get("adapt")),
  }


def render(title: str, sections: list[dict]) -> str:
  """The report's HTML: a page of scan `sections`."""
  return _TEMPLATES.get_template("report.html.j2").render(
      title=title, version=importlib.metadata.version("jaxsr"),
      created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      scans=sections)


def write_report(path: str | os.PathLike, title: str, sections: list[dict]) -> None:
  """Writes the report of `sections` to `path` (under a temporary name, then renamed)."""
  files.write_text(path, render(title, sections))


def write_index(path: str | os.PathLike, title: str, pages: list[dict]) -> None:
  """Writes a dataset's index page: per page {"href", "name", "scans": [names]} a link."""
  files.write_text(path, _TEMPLATES.get_template("index.html.j2").render(
      title=title, version=importlib.metadata.version("jaxsr"),
      created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), pages=pages))
