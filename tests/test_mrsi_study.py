"""configs/mrsi.py:smoke end to end: every network of the study trained, resumed, evaluated."""

import json
import shutil
import time

import jax
import numpy as np
import pytest

from configs import mrsi as mrsi_config
from jaxsr import registry
from jaxsr.mrsi import evaluation as mrsi_evaluation
from jaxsr.mrsi import task as mrsi_task
from jaxsr.mrsi.task import study_runs
from jaxsr.registry import load_run
from jaxsr.train import loop

pytestmark = pytest.mark.slow
# The study's orchestration on a subset of its methods (every conditioning's network is built,
# counted and checked against the reference in test_mrsi_models / test_torch_reference).
METHODS = ("single_scale", "unconditioned", "filter_scaling_met")
NETWORKS = ("single_scale_n16", "single_scale_n24", "unconditioned", "filter_scaling_met",
            "sharpness_filter_scaling_met")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The smoke study trained and evaluated once: (config, workdir, evaluation text, seconds)."""
  config = mrsi_config.get_config("smoke")
  config.methods = METHODS
  config.data.cache_dir = str(tmp_path_factory.mktemp("mrsi_cache"))
  workdir = tmp_path_factory.mktemp("mrsi_study")
  start = time.perf_counter()
  registry.train(config, workdir)
  text = mrsi_evaluation.evaluate(config, workdir)
  return config, workdir, text, time.perf_counter() - start


def test_smoke_study_trains_and_evaluates(study):
  """Every run trains and the evaluation writes its tables and figures (speed is not asserted:
  CI machines are shared; timings belong in benchmarks)."""
  config, workdir, text, _ = study
  for name in NETWORKS:
    run = workdir / "fold0" / name
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["data"]["fold"] == 0 and record["git_commit"]
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert ("critic_loss" in metrics[-1]) == name.startswith("sharpness")
  tables = json.loads((workdir / "eval" / "tables.json").read_text())
  rows = {r["method"]: r for r in tables["table1"]}
  assert list(rows) == ["zero_fill", *config.methods]
  for r in rows.values():
    assert 0 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and r["num_rows"] > 0
  assert tables["parameters"]["single_scale"] == 2 * tables["parameters"]["unconditioned"]
  assert tables["parameters"]["unconditioned"] < tables["parameters"]["filter_scaling_met"]
  assert set(tables["wilcoxon"]["filter_scaling_met"]) == set(rows) - {"filter_scaling_met"}
  assert np.array(tables["condition_study"]["ssim_by_n"]).shape == (2, 2)
  assert [r["lambda"] for r in tables["sharpness"]["table"]] == [0.0, 0.05, 0.1]
  for name in ("condition_n", "condition_metabolite", "sharpness", "sharpness_examples"):
    assert (workdir / "eval" / f"{name}.png").stat().st_size > 5000
  markdown = (workdir / "eval" / "table1.md").read_text()
  assert markdown == text and "| Filter Scaling with Met |" in markdown and "| λ |" in markdown


def test_zero_filling_row_is_the_truncated_truth(study):
  """The baseline's PSNR recomputed with numpy alone: central k-space of the acquired map, the
  quality mask, the truth's peak there as the unit, PSNR's definition."""
  config, workdir, _, _ = study
  tables = json.loads((workdir / "eval" / "tables.json").read_text())
  patients = mrsi_evaluation.phantom.load_patients(config.data.cache_dir, config.data.num_patients)
  patient, n = patients[0], 16  # fold 0 tests patient 0
  f = np.abs(np.fft.fftfreq(64) * 64)
  central = (f[:, None] < n / 2) & (f[None, :] < n / 2)
  expected = {}
  for row in tables["per_map"]:
    if row["method"] != "zero_fill" or row["n"] != n:
      continue
    m = mrsi_evaluation.phantom.METABOLITES.index(row["metabolite"])
    truth, mask = patient.maps[row["slice"], m], patient.quality[row["slice"]]
    lr = np.real(np.fft.ifft2(np.fft.fft2(truth) * central))
    peak = truth[mask].max()
    mse = np.mean(((lr - truth)[mask] / peak) ** 2)
    expected[row["slice"], m] = (row["psnr"], 10 * np.log10(1.0 / mse))
  assert len(expected) >= 2
  for scored, recomputed in expected.values():
    assert scored == pytest.approx(recomputed, rel=1e-4)


def test_gan_run_resumes_to_the_same_state(study, tmp_path):
  """Restoring the step-2 checkpoint of the adversarial run and training on gives step 4 again."""
  config, workdir, _, _ = study
  name = "fold0/sharpness_filter_scaling_met"
  copy = tmp_path / "resumed"
  shutil.copytree(workdir / name, copy)
  shutil.rmtree(copy / "checkpoints" / "4")
  loop.train(study_runs(config)[name], copy, family_task=mrsi_task)
  record = json.loads((copy / "run.json").read_text())
  assert record["resumed_from_step"] == 2
  original, resumed = load_run(workdir / name), load_run(copy)
  assert resumed.step == original.step == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               original.variables, resumed.variables)
  read = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(read(copy)[-1]["loss"], read(workdir / name)[-1]["loss"], rtol=1e-5)



def _write_patient_files(folder, patient, metabolite, n):
  """The patient's map of `metabolite` as an n × n acquisition (its central k-space) and its
  64 × 64 T1 and FLAIR, as NIfTI files; returns the paths and the acquired map."""
  import nibabel as nib
  size = patient.maps.shape[-1]
  spectrum = np.fft.fft2(np.moveaxis(patient.maps[:, metabolite], 0, -1), axes=(0, 1))
  f = np.rint(np.fft.fftfreq(n) * n).astype(int)
  kept = np.abs(f) < n / 2
  acquired_spectrum = np.zeros((n, n, spectrum.shape[2]), complex)
  acquired_spectrum[np.ix_(kept, kept)] = spectrum[np.ix_(f[kept] % size, f[kept] % size)]
  acquired = np.fft.ifft2(acquired_spectrum, axes=(0, 1)).real * (n / size) ** 2
  lr_affine = patient.affine.copy()
  lr_affine[:3, :2] *= size / n
  paths = {}
  for name, data, affine in (("map", acquired, lr_affine),
                             ("t1", np.moveaxis(patient.t1, 0, -1), patient.affine),
                             ("flair", np.moveaxis(patient.flair, 0, -1), patient.affine)):
    paths[name] = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), paths[name])
  return paths, acquired


def test_upsample_mrsi_command_matches_the_evaluated_network(study, tmp_path, capsys):
  """A user's n × n map through `jaxsr upsample-mrsi` gives the network's evaluation output
  (same geometry, normalisation and inputs), on the map's affine scaled in-plane by n / 64."""
  import nibabel as nib

  from jaxsr import cli, kspace
  config, workdir, _, _ = study
  run_dir = workdir / "fold0" / "sharpness_filter_scaling_met"
  patients = mrsi_evaluation.phantom.load_patients(config.data.cache_dir, config.data.num_patients)
  patient, n, metabolite = patients[0], 24, 2
  paths, acquired = _write_patient_files(tmp_path, patient, metabolite, n)
  out = tmp_path / "naa_sr.nii.gz"
  args = ["upsample-mrsi", "--checkpoint", str(run_dir), "--map", str(paths["map"]),
          "--t1", str(paths["t1"]), "--flair", str(paths["flair"]), "--metabolite", "naa",
          "--sharpness", "0.05", "--out", str(out)]
  assert cli.main(args) == 0
  assert "64×64×" in capsys.readouterr().out
  image = nib.load(out)
  np.testing.assert_allclose(image.affine, patient.affine, atol=1e-4)
  result = np.moveaxis(np.asarray(image.dataobj), -1, 0)  # (S, 64, 64)
  assert result.shape == patient.maps[:, 0].shape and np.all(np.isfinite(result))
  # Without a mask every voxel is kept, so the measured k-space is kept exactly.
  truth = patient.maps[:, metabolite]
  zero_filled = np.asarray(kspace.truncate(truth, n))
  np.testing.assert_allclose(np.asarray(kspace.truncate(result, n)), zero_filled,
                             atol=1e-4 * np.abs(truth).max())
  # The same slice as evaluation scores it (all voxels valid: a mask of ones): one
  # normalisation, computed from the LR map, in both.
  run = load_run(run_dir)
  s = patient.maps.shape[0] // 2
  maps = mrsi_evaluation.TestMaps(
      {"hr": truth[s][None], "t1": patient.t1[s][None], "flair": patient.flair[s][None],
       "mask": np.ones((1, 64, 64), np.float32)}, np.array([metabolite], np.int32),
      [patient.name], np.array([s]))
  expected = mrsi_evaluation.Generator(run, batch_size=1)(maps, n, sharpness=0.05)[0]
  lr = zero_filled[s]
  peak = np.abs(lr).max()
  np.testing.assert_allclose(result[s], expected, rtol=0.02, atol=0.02 * peak)
  assert np.abs(result[s] - lr).max() > 1e-3 * peak  # the network changed the zero-filled map


@pytest.mark.parametrize("change, message", [
    ({"--metabolite": "lactate"}, "not one the network knows"),
    ({"--sharpness": "0.5"}, "outside what"),
    ({"--checkpoint": "fold0/unconditioned", "--sharpness": "0.02"}, "0 only"),
    ({"map_n": 14}, "trained for n from 16 to 24"),
    ({"--out": "out.png"}, "must be a .nii"),
])
def test_upsample_mrsi_refuses_bad_requests_with_one_line(study, tmp_path, capsys, change,
                                                          message):
  from jaxsr import cli
  config, workdir, _, _ = study
  patients = mrsi_evaluation.phantom.load_patients(config.data.cache_dir, config.data.num_patients)
  paths, _ = _write_patient_files(tmp_path, patients[0], 2, change.pop("map_n", 24))
  options = {"--checkpoint": "fold0/sharpness_filter_scaling_met", "--map": str(paths["map"]),
             "--t1": str(paths["t1"]), "--flair": str(paths["flair"]), "--metabolite": "NAA",
             "--out": "out.nii.gz", **change}
  options["--checkpoint"] = str(workdir / options["--checkpoint"])
  options["--out"] = str(tmp_path / options["--out"])
  argv = ["upsample-mrsi"] + [x for item in options.items() for x in item]
  assert cli.main(argv) == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith("jaxsr upsample-mrsi: error:") and message in error
  assert "\n" not in error and not (tmp_path / "out.nii.gz").exists()


def test_a_network_trained_longer_beats_zero_filling(study, tmp_path):
  """80 steps of the smoke Filter Scaling with Met network beat k-space zero-filling on the
  test patient (mean PSNR over its maps and both n, by a loose margin)."""
  config, _, _, _ = study
  config = config.copy_and_resolve_references()
  config.methods, config.sharpness_method = ("filter_scaling_met",), ""
  config.train.num_steps = config.train.checkpoint_every_steps = 80
  registry.train(config, tmp_path)
  run = load_run(tmp_path / "fold0" / "filter_scaling_met")
  patients = mrsi_evaluation.phantom.load_patients(config.data.cache_dir, config.data.num_patients)
  maps = mrsi_evaluation.test_maps([patients[0]], config.eval)  # fold 0 tests patient 0
  generator = mrsi_evaluation.Generator(run, config.eval.batch_size)
  psnr = {name: np.mean([mrsi_evaluation.score(predict(n), maps)[0].mean()
                         for n in config.data.n_values])
          for name, predict in (("network", lambda n: generator(maps, n)),
                                ("zero_fill", lambda n: mrsi_evaluation.zero_fill(maps, n)))}
  assert psnr["network"] > psnr["zero_fill"] + 0.5, psnr
