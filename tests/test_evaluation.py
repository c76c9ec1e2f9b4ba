"""Result tables, Wilcoxon tests and per-subject scoring."""

import types

import numpy as np
import pytest

from jaxsr.dmri import dti
from jaxsr.dmri.evaluation.protocol import (Method, classical_methods, evaluated_volumes,
                                            score_subject)
from jaxsr.dmri.evaluation.records import ScoreRecords, same_training
from jaxsr.tables import DTI_METRICS, markdown_pvalues, markdown_table, summarise, wilcoxon


def rows():
  out = []
  for subject, bonus in (("s1", 0.0), ("s2", 1.0)):
    for scale in (2.0, 3.0, 4.0, 2.4):
      out.append({"subject": subject, "method": "tricubic", "scale": scale,
                  "psnr": 30 - scale + bonus, "ssim": 0.9 - scale / 100})
      out.append({"subject": subject, "method": "csr_dmri", "scale": scale,
                  "psnr": 31 - scale + bonus, "ssim": 0.8})
  return out


def test_summarise_means_over_subjects_in_paper_column_order():
  table = summarise(rows())
  assert [r["scale"] for r in table[:4]] == [2.0, 3.0, 4.0, 2.4]
  assert [r["method"] for r in table] == ["tricubic"] * 4 + ["csr_dmri"] * 4
  row = next(r for r in table if r["method"] == "csr_dmri" and r["scale"] == 3.0)
  assert row["psnr"] == 28.5 and row["psnr_std"] == 0.5 and row["num_subjects"] == 2


def test_summarise_averages_each_subjects_volumes_first():
  per_volume = [{"subject": "a", "method": "m", "scale": 2.0, "volume": v, "psnr": p, "ssim": 0}
                for v, p in enumerate((10.0, 20.0, 30.0))]
  per_volume.append({"subject": "b", "method": "m", "scale": 2.0, "volume": 0, "psnr": 40.0,
                     "ssim": 0})
  (row,) = summarise(per_volume)
  assert row["psnr"] == 30.0 and row["psnr_std"] == 10.0  # subjects 20 and 40, not volumes


def test_markdown_table_bolds_the_best_of_each_column():
  text = markdown_table(summarise(rows()))
  lines = text.strip().splitlines()
  assert lines[0].startswith("| method | 2× PSNR | 2× SSIM | 3× PSNR")
  assert "2.4× SSIM" in lines[0]
  csr = next(l for l in lines if l.startswith("| csr_dmri"))
  tri = next(l for l in lines if l.startswith("| tricubic"))
  assert csr.count("**") == 8 and tri.count("**") == 8  # PSNR wins for one, SSIM for the other
  assert "**29.5000**" in csr and "**0.8800**" in tri


def test_markdown_table_orders_rows_adds_columns_and_bolds_minima_for_errors():
  table = [{"method": m, "scale": 2.0, "fa_rmse": e, "md_rmse": 1 - e}
           for m, e in (("a", 0.1), ("b", 0.2))]
  text = markdown_table(table, metrics=DTI_METRICS, methods=["b", "a"],
                        extra_columns={"T1": {"a": "✓"}})
  lines = text.splitlines()
  assert lines[0] == "| method | T1 | 2× FA RMSE | 2× MD RMSE |"
  assert lines[2] == "| b |  | 0.2000 | **0.8000** |"
  assert lines[3] == "| a | ✓ | **0.1000** | 0.9000 |"


def test_wilcoxon_pairs_subjects_not_volumes_and_gives_the_exact_p():
  rng = np.random.default_rng(0)
  data = []
  for subject in range(8):
    for v in range(3):  # volumes of one subject are not independent samples
      base = rng.normal(25, 1)
      gain = 1.0 + 0.1 * subject  # distinct per-subject gains: no ties, an exact test
      data += [{"subject": f"s{subject}", "volume": v, "scale": 2.0, "method": "ref",
                "psnr": base + gain, "ssim": 0.5},
               {"subject": f"s{subject}", "volume": v, "scale": 2.0, "method": "other",
                "psnr": base, "ssim": 0.5}]
  (entry,) = wilcoxon(data, "ref")
  assert entry["method"] == "other" and entry["num_subjects"] == 8
  assert entry["psnr_p"] == pytest.approx(2 * 0.5 ** 8)  # all 8 subjects agree: exact test
  assert entry["smallest_p"] == pytest.approx(2 * 0.5 ** 8)
  assert entry["ssim_p"] == 1.0  # no differences
  text = markdown_pvalues([entry])
  assert "| other | 0.0078 | 1 |" in text and "8 per-subject means" in text
  assert "cannot" not in text and "no difference can be significant" not in text
  one_subject = [r for r in data if r["subject"] == "s0"]
  assert np.isnan(wilcoxon(one_subject, "ref")[0]["psnr_p"])


def test_wilcoxon_with_four_subjects_says_no_difference_can_be_significant():
  data = [{"subject": f"s{i}", "scale": 2.0, "method": m, "psnr": 20 + i + (m == "ref") * (1 + i),
           "ssim": 0.5} for i in range(4) for m in ("ref", "other")]
  (entry,) = wilcoxon(data, "ref")
  assert entry["psnr_p"] == pytest.approx(0.125) and entry["smallest_p"] == pytest.approx(0.125)
  assert "no difference can be significant at 0.05" in markdown_pvalues([entry])


def test_summarise_reports_the_mean_over_seeds_and_their_spread():
  # Seed 0 scores 20 and 22 on two subjects, seed 1 scores 24 and 26 (one volume each).
  data = [{"subject": s, "method": "m", "seed": seed, "scale": 2.0, "psnr": p, "ssim": 0.0}
          for seed, scores in ((0, (20.0, 22.0)), (1, (24.0, 26.0)))
          for s, p in zip(("a", "b"), scores)]
  (row,) = summarise(data)
  assert row["num_seeds"] == 2 and row["num_subjects"] == 2
  assert row["psnr"] == 23.0
  assert row["psnr_seed_std"] == pytest.approx(np.std([21.0, 25.0], ddof=1))
  assert row["psnr_std"] == 1.0  # subjects' means over seeds: 22 and 24
  text = markdown_table([row])
  assert f"23.0000** ± {np.std([21.0, 25.0], ddof=1):.4f}" in text


def test_summarise_and_wilcoxon_count_another_unit_without_grouping():
  """MRSI's tables: patients are the unit, each patient's maps (here two n) averaged first."""
  data = [{"patient": f"p{i}", "n": n, "method": m, "ssim": 0.5,
           "psnr": 20 + i + 0.1 * n + (m == "net") * (1 + i)}
          for i in range(3) for n in (1, 2) for m in ("zero_fill", "net")]
  rows = {r["method"]: r for r in summarise(data, unit="patient", by=())}
  assert rows["zero_fill"]["num_patients"] == 3 and rows["zero_fill"]["num_rows"] == 6
  assert rows["zero_fill"]["psnr"] == pytest.approx(21.15)
  assert rows["net"]["psnr"] == pytest.approx(23.15)
  assert rows["zero_fill"]["psnr_std"] == pytest.approx(np.std([20.15, 21.15, 22.15]))
  (entry,) = wilcoxon(data, "net", unit="patient", by=())
  assert entry["method"] == "zero_fill" and entry["num_patients"] == 3
  assert entry["psnr_p"] == pytest.approx(0.25) and entry["smallest_p"] == pytest.approx(0.25)
  assert entry["ssim_p"] == 1.0  # no difference at all


def test_evaluated_volumes_spread_over_the_shell():
  assert evaluated_volumes(4, 64) == [0, 21, 42, 63]
  assert evaluated_volumes(10, 3) == [0, 1, 2]
  assert evaluated_volumes(1, 5) == [0]
  assert evaluated_volumes(0, 5) == [0, 1, 2, 3, 4]


def _subject(num_volumes=6):
  """A smooth synthetic shell (isotropic-ish tensors) on a 16^3 grid with a spherical mask."""
  x, y, z = np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij")
  mask = x ** 2 + y ** 2 + z ** 2 < 0.8
  bvecs = np.random.default_rng(0).normal(size=(num_volumes, 3))
  bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
  diffusivity = 0.7e-3 + 0.3e-3 * np.cos(2 * x)[..., None] * (bvecs[:, 0] ** 2)
  dwi = np.where(mask[..., None], np.exp(-1000.0 * diffusivity), 0).astype(np.float32)
  return types.SimpleNamespace(name="s", dwi=dwi, t1=np.zeros(mask.shape, np.float32), mask=mask,
                               bvecs=bvecs, bval=1000.0, wm_mask=mask & (x > 0))


def test_score_subject_scores_each_method_scale_and_volume_with_dti():
  subject = _subject()
  methods = classical_methods()
  seen_t1 = []
  methods["t1_user"] = Method("t1_user", lambda lr, t1, shape, s: seen_t1.append(t1) or np.asarray(
      subject.dwi[..., 0]), uses_t1=True)
  rows, dti_rows = score_subject(methods, subject, scales=(2.0, 4.0), num_volumes=2,
                                 dti_scales=(2.0, 4.0))
  assert len(rows) == 3 * 2 * 2 and {r["volume"] for r in rows} == {0, 5}
  assert len(dti_rows) == 3 * 2 and len(seen_t1) == 2 * 6  # every shell volume, both scales
  assert seen_t1[0].shape == (8, 8, 8)
  by = {(r["method"], r["scale"], r["volume"]): r for r in rows}
  assert by["t1_user", 2.0, 0]["psnr"] == np.inf  # returns volume 0's truth
  assert by["tricubic", 2.0, 0]["psnr"] > by["tricubic", 4.0, 0]["psnr"]
  dti = {(r["method"], r["scale"]): r for r in dti_rows}
  assert all(np.isfinite(r["fa_rmse"]) and r["fa_rmse"] >= 0 for r in dti_rows)
  assert dti["tricubic", 2.0]["fa_rmse"] < dti["tricubic", 4.0]["fa_rmse"]


def test_score_subject_fits_tensors_only_at_dti_scales():
  subject = _subject()
  calls = []
  methods = {"m": Method("m", lambda lr, t1, shape, s: calls.append(s) or np.asarray(
      subject.dwi[..., 0]))}
  rows, dti_rows = score_subject(methods, subject, scales=(2.0, 4.0), num_volumes=2,
                                 dti_scales=(4.0,))
  assert calls.count(2.0) == 2 and calls.count(4.0) == 6  # scored volumes; the whole shell
  assert [r["scale"] for r in dti_rows] == [4.0] and len(rows) == 4


def test_spread_directions_skips_repeats_and_antipodes():
  golden = (1 + 5 ** 0.5) / 2
  icosahedron = np.array([[0, 1, golden], [0, -1, golden], [1, golden, 0], [-1, golden, 0],
                          [golden, 0, 1], [-golden, 0, 1]], np.float64)  # 6 axes, |cos| = 0.447
  icosahedron /= np.linalg.norm(icosahedron, axis=1, keepdims=True)
  bvecs = np.concatenate([icosahedron[:3], -icosahedron[:2], icosahedron[3:], icosahedron[4:5]])
  chosen = dti.spread_directions(bvecs, 6)
  np.testing.assert_allclose(np.abs(bvecs[chosen] @ bvecs[chosen].T)[~np.eye(6, dtype=bool)],
                             1 / 5 ** 0.5, rtol=1e-6)  # one of each axis: no repeat, no antipode
  assert dti.spread_directions(bvecs, 0) == list(range(9))
  with pytest.raises(ValueError, match="at least 6 directions"):
    dti.spread_directions(bvecs, 5)


def test_score_subject_fits_tensors_from_dti_volumes_only():
  subject = _subject(num_volumes=10)
  calls = []
  methods = {"m": Method("m", lambda lr, t1, shape, s: calls.append(s) or np.asarray(
      subject.dwi[..., 0]))}
  rows, dti_rows = score_subject(methods, subject, scales=(4.0,), num_volumes=2,
                                 dti_scales=(4.0,), dti_volumes=6)
  fitted = dti.spread_directions(subject.bvecs, 6)
  assert len(calls) == len(set(fitted) | {0, 9}) < 10 and len(rows) == 2 and len(dti_rows) == 1


def test_score_records_are_read_back_only_under_their_key_and_training_config(tmp_path):
  key = {"split": "test", "subjects": ["sub-06"], "scales": [2.0]}
  rows = [{"subject": "sub-06", "method": "arssr", "seed": 1, "scale": 2.0, "volume": 0,
           "psnr": 25.5, "ssim": 0.8}]
  written = ScoreRecords(tmp_path, key).write("arssr/seed1", Method("arssr", None, t1=False,
                                                                    fft_loss=False, seed=1),
                                               rows, [], 300, {"seed": 1})
  assert (tmp_path / "arssr.seed1.json").exists()
  record = ScoreRecords(tmp_path, key).read("arssr/seed1")
  assert record == written and record["rows"] == rows and record["checkpoint_step"] == 300
  assert record["training_run"] == {"seed": 1} and record["t1"] is False
  assert ScoreRecords(tmp_path, {**key, "scales": [2.0, 3.0]}).read("arssr/seed1") is None
  assert ScoreRecords(tmp_path, key).read("arssr/seed2") is None
  assert same_training(record, {"seed": 1}) and same_training(record, {"seed": 1, "time": "t"})
  assert not same_training(record, {"seed": 1, "config": {"train": {"num_steps": 2400}}})
