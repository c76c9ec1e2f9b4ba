"""Exported models (`jaxsr.dmri.app.pretrained`) and the general model shipped in the package."""

import json
import pathlib

import jax
import numpy as np
import pytest
from dipy.data import get_fnames

from configs import general
from jaxsr.dmri.app import pretrained
from jaxsr.dmri.studies import real_scans
from jaxsr.dmri.inference.memory import resident_bytes
from jaxsr.dmri.models import build_model, init_params
from jaxsr.dmri.app.model import Upsampler
from jaxsr.dmri.app.upsample import upsample
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> pathlib.Path:
  config = general.get_config("smoke")
  model = build_model(config.model)
  params = init_params(model, jax.random.key(1), 1, (4, 4, 4))
  return pretrained.export(tmp_path_factory.mktemp("exported"), config, params, step=7,
                           source="test")


def test_export_and_load_round_trip(exported):
  config, model, params, manifest = pretrained.load(exported)
  assert manifest["step"] == 7 and config.model.in_channels == 1
  again = pretrained.load(exported)[2]
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)
  upsampler = Upsampler.from_checkpoint(exported)
  assert upsampler.step == 7 and upsampler.intensity_percentile == 99.0


def test_a_corrupted_or_incomplete_export_is_refused(exported, tmp_path):
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in pretrained.FILES:
    (broken / name).write_bytes((exported / name).read_bytes())
  data = bytearray((broken / "params.msgpack").read_bytes())
  data[-1] ^= 0xFF
  (broken / "params.msgpack").write_bytes(bytes(data))
  with pytest.raises(pretrained.PretrainedError, match="checksum mismatch"):
    pretrained.load(broken)
  (broken / "config.json").unlink()
  with pytest.raises(pretrained.PretrainedError, match="no config.json"):
    pretrained.load(broken)


def test_shipped_model_loads_with_its_checksum_and_record():
  folder = pretrained.general_model_dir()
  manifest = json.loads((folder / "manifest.json").read_text())
  assert pretrained.sha256(folder / "params.msgpack") == manifest["params_sha256"]
  assert (folder / "params.msgpack").stat().st_size < 5 * 2**20  # a few MB at most
  record = json.loads((folder / "run.json").read_text())
  assert record["config"]["data"]["source"] == "randomised"
  upsampler = Upsampler.general()
  assert upsampler.in_channels == 1 and upsampler.intensity_percentile is not None
  assert upsampler.step == manifest["step"]


def test_missing_shipped_model_fails_with_one_line_and_no_output(monkeypatch, tmp_path):
  monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "no_weights")
  out = tmp_path / "out.nii.gz"
  code, err = run_cli("upsample", "--dwi", get_fnames(name="aniso_vox"), "--scale", "2",
                      "--out", out, "--quiet")
  assert code == 2 and "shipped general model is missing" in err
  assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_shipped_model_beats_tricubic_on_a_real_validation_scan():
  """A validation scan (it chose the checkpoint and the defaults; never in the test table)
  degraded 2x in-plane by block averaging."""
  case = real_scans.Case("test_piesno", "in-plane 2x", "block")
  # The budget counts the whole process; a test worker has grown past a fresh command's size.
  budget = resident_bytes() + (3 << 30)
  scores = real_scans.score_case(
      {"tricubic": real_scans.classical_methods()["tricubic"],
       "model": real_scans.model_method(Upsampler.general(), max_memory=budget)}, case)
  assert scores["model"]["psnr"] > scores["tricubic"]["psnr"] + 0.3
  assert scores["model"]["ssim"] > scores["tricubic"]["ssim"]


def test_general_model_outputs_are_not_clipped_at_the_inputs_maximum():
  """docs/usage.md: the general model's outputs are >= 0 with no upper bound (a sharper image
  of an averaged input rightly exceeds the input's maximum); here by 14 %."""
  case = real_scans.Case("test_piesno", "in-plane 2x", "block")
  lr = case.lr()
  out, _ = upsample(lr, real_scans.lr_affine((2.0, 2.0, 1.0)), Upsampler.general(),
                    shape=case.hr_shape, max_memory=resident_bytes() + (3 << 30))
  assert out.min() >= 0 and out.max() > 1.05 * lr.max()
