"""BIDS datasets: reading scans, training from one, and `jaxsr bids` writing derivatives."""

import json
import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest

import jaxsr
from configs import arssr
from jaxsr import nifti, registry
from jaxsr.dmri.data import bids, subjects
from jaxsr.dmri.app.model import Upsampler
from tests.cli_helpers import BUDGET, run_cli

pytestmark = pytest.mark.slow


def _write_scan(root: pathlib.Path, participant: str, session: str | None, source: pathlib.Path,
                *, t1: bool = True) -> pathlib.Path:
  """Copies an embedded subject folder `source` into `root` as one BIDS scan."""
  folder = root / f"sub-{participant}" / (f"ses-{session}" if session else "")
  stem = f"sub-{participant}" + (f"_ses-{session}" if session else "")
  (folder / "dwi").mkdir(parents=True)
  shutil.copyfile(source / "data.nii.gz", folder / "dwi" / f"{stem}_dwi.nii.gz")
  shutil.copyfile(source / "bvals", folder / "dwi" / f"{stem}_dwi.bval")
  shutil.copyfile(source / "bvecs", folder / "dwi" / f"{stem}_dwi.bvec")
  (folder / "dwi" / f"{stem}_dwi.json").write_text('{"PhaseEncodingDirection": "j-"}')
  if t1:
    (folder / "anat").mkdir()
    shutil.copyfile(source / "T1w.nii.gz", folder / "anat" / f"{stem}_T1w.nii.gz")
  return folder / "dwi" / f"{stem}_dwi.nii.gz"


def write_bids_dataset(root: pathlib.Path, sources: list[pathlib.Path]) -> pathlib.Path:
  """sub-00 (no session), sub-01 (sessions a and b: two scans of one participant), sub-02, ..."""
  root.mkdir(parents=True)
  (root / "dataset_description.json").write_text(
      json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
  for index, source in enumerate(sources):
    for session in (("a", "b") if index == 1 else (None,)):
      _write_scan(root, f"{index:02d}", session, source)
  return root


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> list[pathlib.Path]:
  """The three subject folders of the smoke configuration's embedded data."""
  config = arssr.get_config("smoke")
  config.data.cache_dir = str(tmp_path_factory.mktemp("bids_cache"))
  return sorted(p.dwi.parent for p in subjects.subject_sources(config.data))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, embedded) -> pathlib.Path:
  return write_bids_dataset(tmp_path_factory.mktemp("bids") / "ds", embedded)


def test_find_scans_pairs_each_dwi_with_its_table_and_t1(dataset):
  scans = bids.find_scans(dataset)
  assert [(s.participant, s.session, s.stem) for s in scans] == [
      ("00", None, "sub-00"), ("01", "a", "sub-01_ses-a"), ("01", "b", "sub-01_ses-b"),
      ("02", None, "sub-02")]
  for scan in scans:
    assert scan.bval == scan.dwi.with_name(f"{scan.stem}_dwi.bval") and scan.bval.is_file()
    assert scan.bvec == scan.dwi.with_name(f"{scan.stem}_dwi.bvec")
    assert scan.t1.name == f"{scan.stem}_T1w.nii.gz"  # the same session's T1w
  assert [s.stem for s in bids.find_scans(dataset, ["sub-02", "00"])] == ["sub-00", "sub-02"]


def test_resolution_labels_and_derivative_names():
  assert bids.resolution_label([1.25, 1.25, 1.25]) == "1p25"
  assert bids.resolution_label([1.0, 1.0, 2.5]) == "1x1x2p5"
  assert bids.resolution_label([0.8333333] * 3) == "0p833"
  scan = bids.BidsScan("01", "pre", pathlib.Path("/d/sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz"),
                       pathlib.Path("b"), pathlib.Path("v"), None, "r")
  assert bids.derivative_path("/out", scan, "1p25") == pathlib.Path(
      "/out/sub-01/ses-pre/dwi/sub-01_ses-pre_res-1p25_desc-jaxsr_dwi.nii.gz")


def test_bids_subjects_equal_the_same_files_read_as_hcp_folders(dataset, embedded, tmp_path):
  """The BIDS path preprocesses like the HCP path; only the mask differs (computed from the
  mean b0, as a raw BIDS dataset has none), so the values are compared inside both masks."""
  scan = bids.find_scans(dataset, ["02"])[0]
  files = subjects.SubjectFiles(name=scan.stem, participant="02", dwi=scan.dwi, bvals=scan.bval,
                                bvecs=scan.bvec, t1=scan.t1)
  from_bids = subjects.load_subject(files, cache_dir=tmp_path)
  from_hcp = subjects.load_hcp_subject(embedded[2], cache_dir=tmp_path)
  both = np.asarray(from_bids.mask) & np.asarray(from_hcp.mask)
  reference = np.asarray(from_hcp.mask)
  assert both.sum() > 0.8 * reference.sum()  # median_otsu finds most of the brain
  np.testing.assert_allclose(np.asarray(from_bids.dwi)[both], np.asarray(from_hcp.dwi)[both],
                             rtol=1e-6)
  np.testing.assert_allclose(from_bids.bvecs, from_hcp.bvecs)
  np.testing.assert_allclose(from_bids.affine, from_hcp.affine)


def test_train_from_bids_splits_by_participant_then_bids_app_writes_derivatives(
    dataset, tmp_path):
  config = arssr.get_config("smoke")
  config.data.update(source="bids", root=str(dataset), cache_dir=str(tmp_path / "cache"),
                     num_val=1, num_test=1)
  config.train.num_steps = 2
  splits = subjects.load_subjects(config.data)
  assert {k: [s.name for s in v] for k, v in splits.items()} == {
      "train": ["sub-00"], "val": ["sub-01_ses-a", "sub-01_ses-b"], "test": ["sub-02"]}
  run = tmp_path / "run"
  registry.train(config, run)
  assert (run / "checkpoints" / "2").is_dir()

  out = tmp_path / "derivatives"
  scale = 1.25  # any scale: a small one keeps the test short
  code, err = run_cli("bids", dataset, out, "participant", "--participant-label", "01",
                      "--checkpoint", run, "--scale", scale, "--quiet", "--max-memory", BUDGET)
  assert code == 0, err
  description = json.loads((out / "dataset_description.json").read_text())
  assert description["DatasetType"] == "derivative"
  assert description["GeneratedBy"][0] == {**description["GeneratedBy"][0], "Name": "jaxsr",
                                           "Version": jaxsr.__version__}
  digest = Upsampler.from_checkpoint(run).params_sha256()
  for session in ("a", "b"):
    source = dataset / "sub-01" / f"ses-{session}" / "dwi" / f"sub-01_ses-{session}_dwi.nii.gz"
    image = nib.load(source)
    shape = tuple(round(scale * n) for n in image.shape[:3])  # the field of view is kept
    voxel_size = nib.affines.voxel_sizes(image.affine) * image.shape[:3] / shape
    label = bids.resolution_label(voxel_size)
    stem = (out / "sub-01" / f"ses-{session}" / "dwi"
            / f"sub-01_ses-{session}_res-{label}_desc-jaxsr_dwi")
    output = nib.load(f"{stem}.nii.gz")
    assert output.shape == shape + image.shape[3:]
    np.testing.assert_allclose(nib.affines.voxel_sizes(output.affine), voxel_size, rtol=1e-6)
    assert pathlib.Path(f"{stem}.bval").read_bytes() == source.with_suffix("").with_suffix(
        ".bval").read_bytes()
    assert pathlib.Path(f"{stem}.bvec").is_file()
    sidecar = json.loads(pathlib.Path(f"{stem}.json").read_text())
    assert sidecar["model"]["params_sha256"] == digest
    assert sidecar["GeneratedBy"]["Version"] == jaxsr.__version__
    assert sidecar["input"]["file"] == os.fspath(source)
    np.testing.assert_allclose(sidecar["output"]["scale"], np.divide(shape, image.shape[:3]))
    assert sidecar["seconds"] > 0
    assert sidecar["Sources"] == [f"bids:raw:sub-01/ses-{session}/dwi/{source.name}"]
    spread_stem = pathlib.Path(str(stem).replace("desc-jaxsr_", "desc-jaxsrUncertainty_"))
    spread = nib.load(f"{spread_stem}.nii.gz")
    assert spread.shape == output.shape and np.asarray(spread.dataobj).min() >= 0
    np.testing.assert_allclose(spread.affine, output.affine)
    spread_sidecar = json.loads(pathlib.Path(f"{spread_stem}.json").read_text())
    assert spread_sidecar["Sources"] == [
        f"bids::sub-01/ses-{session}/dwi/{pathlib.Path(stem).name}.nii.gz"]
  assert not (out / "sub-00").exists() and not (out / "sub-02").exists()
  # The participant's report at the root (fMRIPrep's place), both sessions on it, and an index.
  page = (out / "sub-01.html").read_text()
  assert page.count("<h2 id=\"scan-") == 2 and "ses-a" in page and "ses-b" in page
  assert page.count("data:image/png;base64,") >= 4  # mean b0 and a DW volume per scan
  index = (out / "index.html").read_text()
  assert 'href="sub-01.html"' in index and "sub-00" not in index

  code, err = run_cli("bids", dataset, out, "participant", "--participant-label", "01",
                      "--checkpoint", run, "--scale", scale)
  assert code == 2 and "already exists (use --overwrite" in err


def _no_description(root):
  os.remove(root / "dataset_description.json")
  return [], "not a BIDS dataset (no dataset_description.json)"


def _unknown_participant(root):
  return ["--participant-label", "07"], "no participant sub-07 (the dataset has sub-00, sub-01"


def _no_bval(root):
  os.remove(root / "sub-01" / "ses-b" / "dwi" / "sub-01_ses-b_dwi.bval")
  return [], ("sub-01_ses-b_dwi.nii.gz: no gradient table (sub-01_ses-b_dwi.bval not found "
              "beside it): BIDS requires a _dwi image's .bval and .bvec; a b0 or structural "
              "volume alone is not a BIDS DWI: add its table (b-value 0, vector 0 0 0), or run "
              "`jaxsr upsample --input FILE` on it")


def _output_is_input(root):
  return ["--out-is-input"], "is the BIDS dataset itself"


@pytest.mark.parametrize("break_dataset", [_no_description, _unknown_participant, _no_bval,
                                           _output_is_input])
def test_bad_bids_input_is_one_line_exit_2_and_nothing_written(dataset, tmp_path,
                                                               break_dataset):
  root = tmp_path / "ds"
  shutil.copytree(dataset, root)
  extra, message = break_dataset(root)
  out = tmp_path / "out"
  if extra == ["--out-is-input"]:
    extra, out = [], root
  before = sorted(p for p in tmp_path.rglob("*"))
  code, err = run_cli("bids", root, out, "participant", "--scale", "2", *extra)
  assert code == 2, err
  assert err.count("\n") == 1 and err.startswith("jaxsr bids: error: ") and message in err, err
  assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_dataset_without_dwi_for_a_participant_is_refused(tmp_path):
  root = tmp_path / "ds"
  (root / "sub-01" / "anat").mkdir(parents=True)
  (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
  nifti.save_volume(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", np.ones((4, 4, 4)), np.eye(4))
  with pytest.raises(nifti.DataError, match="sub-01: no DWI"):
    bids.find_scans(root)
