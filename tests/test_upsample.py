"""`jaxsr.upsample` and the `jaxsr upsample` command on arrays, real scans and bad input."""

import json
import os
import pathlib
import shutil

import hypothesis
import hypothesis.strategies as st
import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from dipy.data import get_fnames

import jaxsr
from jaxsr import cli, geometry, nifti
from jaxsr.dmri.cli import parse_size
from jaxsr.dmri.degradation.degrade import degrade
from jaxsr.dmri.app.model import Upsampler
from jaxsr.outputs import companion_path
from tests.cli_helpers import run_cli
from tests.fuzzing import NIFTI_FILES, write_fuzzed_nifti

pytestmark = pytest.mark.slow
# Budgets here cover the whole test process, which holds every earlier test's compiled
# programs: generous, except where a test is about the budget.
BUDGET = 32 * 2**30


@pytest.fixture(scope="module")
def arssr(arssr_smoke_run):
  return Upsampler.from_checkpoint(arssr_smoke_run)


def grid_affine(voxel, shape) -> np.ndarray:
  """A voxel -> world affine of `voxel` mm voxels whose grid of `shape` is centred on the origin."""
  voxel = np.broadcast_to(np.asarray(voxel, np.float64), (3,))
  return nib.affines.from_matvec(np.diag(voxel), -(np.asarray(shape) - 1) / 2 * voxel)


def head_phantom(shape=(14, 12, 10), affine=None) -> np.ndarray:
  """A smooth ellipsoidal 'head' in world mm (values 200..1000, 0 outside) sampled on a grid.

  Radii 24 x 20 x 16 mm about the world origin with a bright Gaussian core; the
  default grid is 4 mm voxels centred on the origin.
  """
  affine = grid_affine(4.0, shape) if affine is None else affine
  points = geometry.voxel_centres_world(affine, shape)
  radius = np.sqrt(np.sum((points / [24.0, 20.0, 16.0]) ** 2, -1))
  core = np.exp(-np.sum(points ** 2, -1) / (2 * 8.0 ** 2))
  return np.where(radius < 1, 200 + 800 * core, 0).astype(np.float32)


def test_upsample_array_geometry_range_and_mask(arssr):
  data = head_phantom()
  affine = nib.affines.from_matvec(np.diag([-4.0, 4.0, 5.0]), [60.0, -50.0, -20.0])  # any grid
  out, out_affine = jaxsr.upsample(data, affine, arssr, voxel_size=2.0, max_memory=BUDGET)
  assert out.shape == (28, 24, 25) and out.dtype == np.float32
  np.testing.assert_allclose(out_affine, geometry.output_affine(affine, data.shape, out.shape))
  assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= data.max()
  # Back-projection: downsampling the output gives the input back (up to the clipping).
  relative = np.abs(np.asarray(degrade(out, data.shape)) - data).mean() / data[data > 0].mean()
  assert relative < 0.1, relative
  mask = data > 0
  masked, _ = jaxsr.upsample(data, affine, arssr, scale=2, mask=mask, max_memory=BUDGET)
  np.testing.assert_array_equal(masked[~geometry.nearest_on_output(mask, masked.shape)], 0.0)
  with pytest.raises(nifti.DataError, match="does not match the input grid"):
    jaxsr.upsample(data, affine, arssr, scale=2, mask=mask[:-1])


def test_4d_dwi_is_written_back_in_signal_units(arssr):
  """DW volumes at half the b0 signal come out at half the super-resolved b0 (known answer)."""
  b0 = head_phantom()
  data = np.stack([b0, 0.5 * b0, 0.5 * b0, 0.98 * b0], axis=-1)
  bvals = np.array([0, 1000, 1000, 5])
  mask = b0 > 0
  out, _ = jaxsr.upsample(data, np.eye(4), arssr, scale=2, bvals=bvals, mask=mask,
                          max_memory=BUDGET)
  assert out.shape == (28, 24, 20, 4)
  inside = geometry.nearest_on_output(mask, out.shape[:3])
  mean_b0 = out[..., [0, 3]].mean(-1)[inside]
  for v in (1, 2):
    ratio = out[..., v][inside].sum() / mean_b0.sum()
    assert ratio == pytest.approx(0.5, abs=0.03)
  with pytest.raises(nifti.DataError, match="no b0"):
    jaxsr.upsample(data, np.eye(4), arssr, scale=2, bvals=np.full(4, 1000))


def test_t1_models_take_the_t1_at_its_own_grid(csr_smoke_run):
  data = head_phantom()
  affine = grid_affine(4.0, data.shape)
  # The T1 at 2 mm on a grid rotated by 90 degrees about z, covering the same head.
  t1_shape = (26, 30, 22)
  t1_affine = nib.affines.from_matvec(np.array([[0, -2.0, 0], [2.0, 0, 0], [0, 0, 2.0]]),
                                      [29.0, -25.0, -21.0])
  t1 = head_phantom(t1_shape, t1_affine)
  out, _ = jaxsr.upsample(data, affine, csr_smoke_run, scale=2, t1=t1, t1_affine=t1_affine,
                          max_memory=BUDGET)
  assert out.shape == (28, 24, 20) and np.all(np.isfinite(out))
  assert 0 <= out.min() and out.max() <= data.max()
  with pytest.raises(nifti.DataError, match="trained with a T1"):
    jaxsr.upsample(data, affine, csr_smoke_run, scale=2, max_memory=BUDGET)
  far = t1_affine.copy()
  far[:3, 3] += 500
  with pytest.raises(nifti.DataError, match="does not overlap"):
    jaxsr.upsample(data, affine, csr_smoke_run, scale=2, t1=t1, t1_affine=far, max_memory=BUDGET)


def test_command_on_the_real_anisotropic_scan(arssr_smoke_run, tmp_path):
  """dipy's aniso_vox (4 x 4 x 5 mm b0 EPI, oblique affine) to 2 mm isotropic."""
  source = str(get_fnames(name="aniso_vox"))
  lr = nib.load(source)
  out, preview = tmp_path / "aniso_2mm.nii.gz", tmp_path / "preview.png"
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", source,
                      "--voxel-size", 2, "--out", out, "--preview", preview, "--quiet",
                      "--max-memory", BUDGET)
  assert code == 0, err
  image = nib.load(str(out))
  assert image.shape == (116, 116, 60)
  np.testing.assert_allclose(image.header.get_zooms(), (2.0, 2.0, 2.0), atol=1e-5)
  np.testing.assert_allclose(image.affine, geometry.output_affine(lr.affine, lr.shape, image.shape),
                             atol=1e-4)
  assert (image.header["qform_code"], image.header["sform_code"]) == (1, 1)
  values = image.get_fdata(dtype=np.float32)
  input_values = lr.get_fdata(dtype=np.float32)
  assert np.all(np.isfinite(values))
  assert input_values.min() <= values.min() and values.max() <= input_values.max()
  picture = matplotlib.image.imread(preview)
  assert picture.ndim == 3 and picture.shape[0] > 300 and picture.std() > 0.05
  assert sorted(os.listdir(tmp_path)) == ["aniso_2mm.json", "aniso_2mm.nii.gz", "preview.png"]
  sidecar = json.loads((tmp_path / "aniso_2mm.json").read_text())
  assert sidecar["input"]["file"] == os.path.abspath(source)
  assert sidecar["output"]["shape"] == [116, 116, 60]
  np.testing.assert_allclose(sidecar["output"]["scale"], np.array([116, 116, 60]) / lr.shape)
  assert sidecar["GeneratedBy"]["Version"] == jaxsr.__version__
  assert sidecar["model"]["source"] == str(arssr_smoke_run) and sidecar["seconds"] > 0
  params = Upsampler.from_checkpoint(arssr_smoke_run).params_sha256()
  assert sidecar["model"]["params_sha256"] == params and len(params) == 64


def test_command_on_the_real_4d_dwi_copies_the_gradient_table_and_says_so_of_nan_rows(
    arssr_smoke_run, tmp_path, capsys):
  """dipy's small_64D (real 4D DWI, 65 volumes, 2 mm) at 2x with its bvals and bvecs; its
  b-vector file has a NaN row (the b0): written as 0, with a line saying so."""
  dwi, bvals, bvecs = map(str, get_fnames(name="small_64D"))
  out = tmp_path / "dwi_1mm.nii.gz"
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", dwi, "--bvals", bvals,
                      "--bvecs", bvecs, "--scale", 2, "--out", out, "--quiet",
                      "--max-memory", BUDGET)
  assert code == 0, err
  image = nib.load(str(out))
  assert image.shape == (20, 20, 20, 65)
  values = image.get_fdata(dtype=np.float32)
  assert np.all(np.isfinite(values)) and values.min() >= 0
  assert values.max() <= nib.load(dwi).get_fdata().max()
  assert companion_path(out, ".bval").read_bytes() == pathlib.Path(bvals).read_bytes()
  written, given = (np.loadtxt(p) for p in (companion_path(out, ".bvec"), bvecs))
  assert np.isnan(given).any() and np.all(np.isfinite(written))
  np.testing.assert_array_equal(written, np.nan_to_num(given))
  note = "the b-vectors of b0 volume(s) 0 are NaN (no direction); written as 0"
  printed = capsys.readouterr().out
  assert printed.count("\n") == 2 and note in printed  # the note, then what was written
  record = json.loads(companion_path(out, ".json").read_text())
  assert any(note in n for n in record["notes"])
  assert record["output"]["shape"] == [20, 20, 20, 65] and record["input"]["shape"][3] == 65


def test_help_explains_every_flag():
  parser, _ = cli.build_parser()
  upsample = parser._subparsers._group_actions[0].choices["upsample"]
  flags = [a for a in upsample._actions if a.option_strings and a.dest != "help"]
  assert {a.dest for a in flags} >= {"checkpoint", "dwi", "t1", "bvals", "bvecs", "mask",
                                     "voxel_size", "scale", "shape", "out", "max_memory",
                                     "preview", "back_projection", "psf", "adapt", "save_adapted"}
  assert all(len(a.help) > 20 for a in flags)
  text = upsample.format_help()
  assert "in mm" in text and "4G or 512M" in text and "exactly one of" in text
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--help"])
  assert exit_info.value.code == 0


def test_option_errors_are_one_line_exit_2(capsys):
  for args, expected in [(["--shape", "100,100"], "--shape takes one number or three"),
                         (["--scale", "2,2"], "--scale takes one number or three"),
                         (["--scale", "2", "--voxel-size", "1"], "not allowed with argument"),
                         (["--scale", "2", "--adapt", "many"], "invalid int value")]:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["upsample", "--dwi", "in.nii.gz", "--out", "out.nii.gz", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, (args, err)
    assert err.startswith("jaxsr upsample: error: ") and expected in err, (args, err)


def test_ctrl_c_is_one_line_exit_130_and_no_progress_bars_off_a_terminal(monkeypatch, capsys):
  from jaxsr.dmri import cli as dmri_cli

  seen = {}

  def interrupted(args):
    seen["quiet"] = args.quiet
    raise KeyboardInterrupt

  monkeypatch.setattr(dmri_cli, "_upsample", interrupted)
  code = cli.main(["upsample", "--dwi", "in.nii.gz", "--out", "out.nii.gz", "--scale", "2"])
  err = capsys.readouterr().err
  assert code == 130 and err == "jaxsr upsample: interrupted; outputs not complete were not written\n"
  assert seen["quiet"] is True  # stderr is captured here, not a terminal: no progress bars


def test_parse_size():
  assert parse_size("4G") == 4 * 2**30 and parse_size("512M") == 512 * 2**20
  assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("2e9") == 2_000_000_000
  for bad in ("", "4X", "-1G", "0"):
    with pytest.raises(ValueError):
      parse_size(bad)


def _bad_requests(tmp_path, run):
  """(name, arguments after `upsample`, what the message must say) for each bad request."""
  good = tmp_path / "in.nii.gz"
  nib.save(nib.Nifti1Image(head_phantom(), grid_affine(4.0, (14, 12, 10))), str(good))
  flat = tmp_path / "flat.nii.gz"
  nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), str(flat))
  nan = tmp_path / "nan.nii.gz"
  data = np.ones((6, 6, 6, 3), np.float32)
  data[2, 2, 2, 1] = np.inf
  nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
  text = tmp_path / "text.nii.gz"
  text.write_text("hello\n")
  bvals, bvecs = tmp_path / "bvals", tmp_path / "bvecs"
  np.savetxt(bvals, [[0, 1000]])
  np.savetxt(bvecs, np.ones((3, 2)))
  base = ["--checkpoint", run, "--out", tmp_path / "out.nii.gz", "--max-memory", BUDGET]
  return [
      ("missing", [*base, "--dwi", tmp_path / "none.nii.gz", "--scale", 2], "file not found"),
      ("folder", [*base, "--input", tmp_path, "--scale", 2], "a folder, not a NIfTI file"),
      ("not nifti", [*base, "--dwi", text, "--scale", 2], "not a readable NIfTI"),
      ("2D", [*base, "--dwi", flat, "--scale", 2], "expected a 3D or 4D volume"),
      ("inf", [*base, "--dwi", nan, "--scale", 2], "not finite"),
      ("zero scale", [*base, "--dwi", good, "--scale", 0], "positive"),
      ("zero voxel", [*base, "--dwi", good, "--voxel-size", "1,0,1"], "positive"),
      ("too large", [*base, "--dwi", good, "--scale", 20, "--max-output-voxels", 10**6],
       "over the limit"),
      ("bvals count", [*base, "--dwi", nan, "--bvals", bvals, "--bvecs", bvecs, "--scale", 2],
       "2 b-values but"),
      ("bvals alone", [*base, "--dwi", good, "--bvals", bvals, "--scale", 2], "together"),
      ("not a run", ["--checkpoint", tmp_path, "--out", tmp_path / "out.nii.gz", "--dwi", good,
                     "--scale", 2], "no checkpoints"),
      ("no memory", [*base, "--dwi", good, "--scale", 2, "--max-memory", "1M"], "needs at least"),
      ("model without T1", [*base, "--dwi", good, "--t1", good, "--scale", 2], "without a T1"),
      ("out folder", ["--checkpoint", run, "--out", tmp_path / "no" / "o.nii", "--dwi", good,
                      "--scale", 2], "does not exist"),
      ("out suffix", ["--checkpoint", run, "--out", tmp_path / "o.img", "--dwi", good,
                      "--scale", 2], ".nii or .nii.gz"),
  ]


def test_bad_requests_fail_with_one_line_exit_2_and_no_output(arssr_smoke_run, tmp_path):
  for name, args, message in _bad_requests(tmp_path, arssr_smoke_run):
    before = sorted(os.listdir(tmp_path))
    code, err = run_cli("upsample", *args)
    assert code == 2, (name, err)
    assert err.count("\n") == 1 and err.startswith("jaxsr upsample: error: "), (name, err)
    assert message in err, (name, err)
    assert sorted(os.listdir(tmp_path)) == before, name  # nothing written, no temp file


def test_a_run_never_replaces_outputs_another_run_made_meanwhile(arssr_smoke_run, tmp_path,
                                                                 monkeypatch):
  from jaxsr import nifti as nifti_lib

  scan = tmp_path / "in.nii.gz"
  nib.save(nib.Nifti1Image(head_phantom(), grid_affine(4.0, (14, 12, 10))), str(scan))
  out = tmp_path / "out.nii.gz"
  writer = nifti_lib.VolumeWriter

  class OtherRunFinishesFirst(writer):  # while this run writes its volumes, another lands
    def __exit__(self, *error):
      super().__exit__(*error)
      companion_path(out, ".json").write_text("the other run's record\n")

  monkeypatch.setattr(nifti_lib, "VolumeWriter", OtherRunFinishesFirst)
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", scan, "--scale", 2,
                      "--out", out, "--quiet", "--max-memory", BUDGET)
  assert code == 1 and err.count("\n") == 1 and "appeared while this run" in err, err
  assert companion_path(out, ".json").read_text() == "the other run's record\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.json"]  # none of ours
  monkeypatch.setattr(nifti_lib, "VolumeWriter", writer)
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", scan, "--scale", 2,
                      "--out", out, "--quiet", "--max-memory", BUDGET, "--overwrite")
  assert code == 0 and json.loads(companion_path(out, ".json").read_text())["output"]


def test_a_failed_rename_publishes_none_of_the_set(tmp_path, monkeypatch):
  from jaxsr import files

  targets = {name: tmp_path / f"out.{name}" for name in ("image", "sidecar", "preview")}
  temps = {name: files.temporary_path(path) for name, path in targets.items()}
  for temp in temps.values():
    temp.write_text("new\n")
  replace = os.replace

  def failing_on_the_last(source, target):
    if str(target).endswith("preview"):
      raise OSError(28, "No space left on device")
    replace(source, target)

  monkeypatch.setattr(os, "replace", failing_on_the_last)
  with pytest.raises(files.WriteError, match="out.preview: could not write"):
    files.publish_together(temps, targets, overwrite=False)
  assert not any(path.exists() for path in targets.values())  # neither claims nor outputs


def _tampered_run(source: pathlib.Path, target: pathlib.Path, edit) -> pathlib.Path:
  """A copy of run `source` whose checkpoints' JSON items are all changed by `edit(step_dir)`
  (were one left as it was, loading would fall back to it)."""
  shutil.copytree(source, target)
  for step_dir in (target / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      edit(step_dir)
  return target


def test_checkpoints_of_another_kind_or_version_are_refused(arssr_smoke_run, tmp_path):
  def rewrite(item, key_path, value):
    def edit(step_dir):
      path = step_dir / item / "metadata"  # how orbax stores a JsonSave item
      config = json.loads(path.read_text())
      node = config
      for key in key_path[:-1]:
        node = node[key]
      node[key_path[-1]] = value
      path.write_text(json.dumps(config))
    return edit

  good = tmp_path / "in.nii.gz"
  nib.save(nib.Nifti1Image(head_phantom(), grid_affine(4.0, (14, 12, 10))), str(good))
  cases = {
      "format": (rewrite("meta", ("format",), 99), "checkpoint format 99"),
      "kind": (rewrite("config", ("model", "kind"), "dcsrn"), "does not match the 'dcsrn' model"),
      "size": (rewrite("config", ("model", "mlp_width"), 48), "does not match the 'csr_dmri'"),
  }
  for name, (edit, message) in cases.items():
    run = _tampered_run(arssr_smoke_run, tmp_path / name, edit)
    code, err = run_cli("upsample", "--checkpoint", run, "--dwi", good, "--scale", 2,
                        "--out", tmp_path / f"{name}.nii.gz")
    assert code == 2 and message in err and err.count("\n") == 1, (name, err)
    assert not (tmp_path / f"{name}.nii.gz").exists()


@hypothesis.settings(max_examples=10, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.example(nifti_file={"data": np.full((1, 1, 1), 3.4e38, np.float64),
                                "pixdim": [0.0, 0.0, 0.0], "codes": (0, 0), "scaling": (0.0, 0.0),
                                "truncate": None})  # overflows float32: one line, no warning
@hypothesis.given(nifti_file=NIFTI_FILES)
def test_command_fuzzed_headers_give_an_output_or_one_line_exit_2(arssr_smoke_run, tmp_path,
                                                                  nifti_file):
  folder = tmp_path / f"fuzz{np.random.default_rng().integers(1 << 30)}"
  folder.mkdir()
  source = write_fuzzed_nifti(folder / "in.nii", **nifti_file)
  out = folder / "out.nii"
  code, err = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--dwi", source, "--scale", 2,
                      "--out", out, "--quiet", "--max-output-voxels", 50_000,
                      "--max-memory", BUDGET)
  if code == 0:
    image = nib.load(str(out))
    lazy = nifti.open_volume(source)
    assert image.shape[:3] == tuple(2 * n for n in lazy.shape[:3])
    assert np.all(np.isfinite(image.get_fdata()))
  else:
    assert code == 2 and err.count("\n") == 1 and err.startswith("jaxsr upsample: error: "), err
    assert sorted(os.listdir(folder)) == ["in.nii"]
