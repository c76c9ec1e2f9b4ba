"""The uncertainty study (`configs/uncertainty.py`): it runs, and the committed records rebuild
the table in docs/uncertainty.md."""

import pathlib
import shutil

import pytest

from configs import uncertainty as uncertainty_config
from jaxsr import registry
from jaxsr.dmri.app import uncertainty
from jaxsr.dmri.studies import uncertainty_study

pytestmark = pytest.mark.slow

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_the_smoke_study_scores_every_method_and_draws_the_figure(tmp_path):
  config = uncertainty_config.get_config("smoke")
  config.max_memory = 32 * 2**30  # the test worker holds every earlier test's programs
  text = registry.evaluate(config, tmp_path)
  for method in uncertainty.METHODS:
    assert f"| test | {method}" in text
  assert (tmp_path / "eval" / "uncertainty_calibration.png").stat().st_size > 10_000
  assert (tmp_path / "eval" / "uncertainty_test_run.json").is_file()


def test_the_committed_records_rebuild_the_docs_table(tmp_path):
  records = DOCS / "uncertainty_scores"
  for name in ("validation", "test"):
    shutil.copy(records / f"uncertainty_{name}.json", tmp_path)
  config = uncertainty_config.get_config("test")
  config.scores_from = str(tmp_path / "uncertainty_test.json")
  text = uncertainty_study.evaluate(config, tmp_path / "work")
  doc = (DOCS / "uncertainty.md").read_text()
  for line in text.strip().splitlines():
    if line.strip():
      assert line in doc, line
  # The shipped calibration is the one the validation records fit, for the chosen method.
  summary = uncertainty_study.summarise(
      uncertainty_study.json.loads((records / "uncertainty_validation.json").read_text()))
  chosen = max(summary, key=lambda m: summary[m]["spearman_mean"])
  assert chosen == uncertainty.DEFAULT_METHOD
  assert uncertainty.CALIBRATION[chosen] == pytest.approx(summary[chosen]["calibration"],
                                                          rel=1e-3)
