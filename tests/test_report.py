"""The HTML report and the uncertainty map of `jaxsr upsample`, as a person would see them."""

import json
import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest
from dipy.data import get_fnames
from scipy import ndimage

import jaxsr
from jaxsr import geometry, nifti
from jaxsr.dmri.app import report, uncertainty
from jaxsr.dmri.app.model import Upsampler
from tests.cli_helpers import BUDGET, run_cli
from tests.test_upsample import grid_affine, head_phantom

pytestmark = pytest.mark.slow

MAX_REPORT_BYTES = 3 * 2**20


def chromium() -> str | None:
  """The system's Chromium (Debian's package), or None."""
  return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, pathlib.Path]:
  """The issue's command: dipy's real anisotropic b0 to 2 mm with the shipped model."""
  folder = tmp_path_factory.mktemp("report")
  paths = {"out": folder / "x.nii.gz", "report": folder / "x.html",
           "uncertainty": folder / "x_unc.nii.gz"}
  code, err = run_cli("upsample", "--dwi", get_fnames("aniso_vox"), "--voxel-size", "2",
                      "--out", paths["out"], "--report", paths["report"], "--uncertainty",
                      paths["uncertainty"], "--max-memory", BUDGET)
  assert code == 0, err
  return paths


def test_the_command_writes_the_output_its_uncertainty_and_a_report(written):
  out, spread = nib.load(written["out"]), nib.load(written["uncertainty"])
  assert spread.shape == out.shape == (116, 116, 60)
  np.testing.assert_allclose(spread.affine, out.affine)
  values = np.asarray(spread.dataobj)
  assert np.all(np.isfinite(values)) and values.min() >= 0 and values.max() > 0
  sidecar = json.loads(written["out"].with_suffix("").with_suffix(".json").read_text())
  assert sidecar["settings"]["uncertainty"] == uncertainty.DEFAULT_METHOD
  assert {"plan", "volumes", "report"} <= set(sidecar["timing"])
  html = written["report"].read_text()
  assert 0 < written["report"].stat().st_size <= MAX_REPORT_BYTES
  for text in ("aniso_vox.nii.gz", sidecar["model"]["params_sha256"], "58 × 58 × 24",
               "116 × 116 × 60", "What to look for", "uncertainty"):
    assert text in html, text
  assert "http://" not in html and "https://" not in html  # nothing to fetch: opens offline


def test_the_report_renders_in_a_real_browser(written, tmp_path):
  """Headless Chromium loads the report from disk: every image decodes, no console error,
  and the screenshot shows the figures (not a blank page)."""
  browser_path = chromium()
  if browser_path is None:
    if os.environ.get("JAXSR_REQUIRE_BROWSER"):
      pytest.fail("Chromium is required here (JAXSR_REQUIRE_BROWSER) but not installed")
    pytest.skip("no Chromium (apt-get install chromium); .ci/run installs it")
  sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
  shot = tmp_path / "report.png"
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(written["report"].resolve().as_uri())
    images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, "
                           "i.naturalHeight, i.getBoundingClientRect().width])")
    page.screenshot(path=str(shot), full_page=True)
    browser.close()
  assert problems == []
  assert len(images) >= 1
  for complete, width, height, shown_width in images:
    assert complete and width > 100 and height > 100 and shown_width > 100
  import matplotlib.image
  pixels = matplotlib.image.imread(shot)[..., :3]
  dark = np.mean(pixels.mean(-1) < 0.2)  # the figures' black backgrounds and brain panels
  assert pixels.std() > 0.1 and 0.05 < dark < 0.9, (pixels.std(), dark)


def flat_head(shape=(20, 18, 14)) -> tuple[np.ndarray, np.ndarray]:
  """(volume, affine): a uniform ellipsoid (500 inside, 0 outside) on a 4 mm grid: its only
  structure is its edge."""
  affine = grid_affine(4.0, shape)
  points = geometry.voxel_centres_world(affine, shape)
  inside = np.sqrt(np.sum((points / [30.0, 26.0, 20.0]) ** 2, -1)) < 1
  return np.where(inside, 500.0, 0.0).astype(np.float32), affine


def test_the_uncertainty_is_in_the_output_units_and_marks_edges():
  data, affine = flat_head()
  model = Upsampler.general()
  budget = dict(max_memory=32 * 2**30)  # the test worker holds every earlier test's programs
  out, _, spread = jaxsr.upsample(data, affine, model, scale=2, uncertainty=True, psf="cubic",
                                  **budget)
  plain, _ = jaxsr.upsample(data, affine, model, scale=2, psf="cubic", **budget)
  np.testing.assert_array_equal(out, plain)  # asking for it leaves the output as it was
  assert spread.shape == out.shape and spread.min() >= 0
  # In the output's units: ten times the signal, ten times the uncertainty.
  _, _, spread10 = jaxsr.upsample(10 * data, affine, model, scale=2, uncertainty=True,
                                  psf="cubic", **budget)
  np.testing.assert_allclose(spread10, 10 * spread, rtol=1e-3, atol=1e-3 * spread.max())
  # Where the output is guessed (the edge), not where it is flat (deep inside, far outside).
  head = geometry.nearest_on_output(data > 0, out.shape)
  edge = head & ~ndimage.binary_erosion(head, iterations=2)
  deep = ndimage.binary_erosion(head, iterations=6)
  outside = ~ndimage.binary_dilation(head, iterations=6)
  assert spread[edge].mean() > 5 * spread[deep].mean()
  assert spread[edge].mean() > 5 * spread[outside].mean()
  with pytest.raises(ValueError, match="uncertainty method"):
    jaxsr.upsample(data, affine, model, scale=2, uncertainty="guess", **budget)


def test_bad_report_or_uncertainty_paths_are_one_line_exit_2_before_any_work(tmp_path,
                                                                            monkeypatch):
  source = tmp_path / "in.nii.gz"
  nifti.save_volume(source, head_phantom(), grid_affine(4.0, (14, 12, 10)))
  called = []
  monkeypatch.setattr("jaxsr.dmri.app.upsample_files.plan_batch",
                      lambda *a, **k: called.append(1))
  cases = [(["--report", tmp_path / "missing" / "r.html"], "does not exist"),
           (["--report", tmp_path / "r.txt"], "must be an .html file"),
           (["--uncertainty", source], "is one of the inputs"),
           (["--uncertainty", tmp_path / "o.nii.gz"], "needs a file of its own")]
  for extra, message in cases:
    code, err = run_cli("upsample", "--input", source, "--scale", "2", "--out",
                        tmp_path / "o.nii.gz", *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, (extra, err)
  assert not called and sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_an_interrupted_report_leaves_no_file_behind(arssr_smoke_run, tmp_path, monkeypatch):
  source = tmp_path / "in.nii.gz"
  nifti.save_volume(source, head_phantom(), grid_affine(4.0, (14, 12, 10)))

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(report, "write_report", interrupted)
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--input", source,
                      "--scale", "2", "--out", tmp_path / "o.nii.gz", "--report",
                      tmp_path / "r.html", "--uncertainty", tmp_path / "u.nii.gz",
                      "--max-memory", BUDGET)
  assert code == 130 and err.count("\n") == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_the_reports_tricubic_planes_are_tricubic_interpolation():
  from jaxsr.dmri.degradation.degrade import tricubic_upsample
  lr = np.random.default_rng(0).random((7, 6, 5)).astype(np.float32)
  hr_shape, index = (14, 15, 11), np.array([5, 7, 3])
  full = np.asarray(tricubic_upsample(lr, hr_shape))
  planes = report._cubic_planes(lr, hr_shape, index)
  for view, plane in planes.items():
    np.testing.assert_allclose(plane, report._plane(full, view, index), atol=1e-5)
