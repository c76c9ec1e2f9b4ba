"""Score records of a comparison: one JSON file per method and seed, reused while what the
scores depend on (`scores_key`) and the run's training stay the same."""

from __future__ import annotations

import json
import pathlib

from jaxsr import files
from jaxsr.dmri.evaluation.protocol import Method
from jaxsr.train.run_record import METRICS_FILE, git_commit, read_metrics


# Bumped when what a score record holds or how its scores are computed changes.
SCORES_VERSION = 1


def scores_key(config, split: str, subjects) -> dict:
  """What a comparison method's scores depend on besides the method: the split and its
  subjects, the data set and the evaluation settings (not chunk or tile sizes, which
  change only the float rounding)."""
  data = {k: v for k, v in config.data.to_dict().items() if k != "cache_dir"}
  e = config.eval
  key = {"version": SCORES_VERSION, "split": split, "subjects": [s.name for s in subjects],
         "data": data, "scales": [float(s) for s in e.scales], "num_volumes": int(e.num_volumes),
         "dti_scales": [float(s) for s in e.dti_scales], "dti_volumes": int(e.dti_volumes)}
  return json.loads(files.json_text(key, default=str))


def scores_dir(config, out_dir: pathlib.Path, split: str) -> pathlib.Path:
  """`eval.scores_dir`/<split> if set, else OUT/scores."""
  configured = config.eval.get("scores_dir")
  return pathlib.Path(configured).expanduser() / split if configured else out_dir / "scores"


def training_record(directory: pathlib.Path) -> dict | None:
  """A run's `run.json` (config, seed, versions, commit of its training), if it has one, with
  the last line of its metrics (`final_metrics`: step, loss, `elapsed_s`) where it has them."""
  path = pathlib.Path(directory) / "run.json"
  if not path.exists():
    return None
  record = json.loads(path.read_text())
  metrics = read_metrics(pathlib.Path(directory) / METRICS_FILE)
  if metrics:
    record["final_metrics"] = metrics[-1]
  return record


def same_training(record: dict, trained: dict | None) -> bool:
  """Whether a score record was made from a run trained with the config in `trained` (the
  run's training record; a run retrained with another config may reach the same step)."""
  kept = record.get("training_run") or {}
  return (kept.get("config") == (trained or {}).get("config"))


class ScoreRecords:
  """One JSON record per method (and seed) of a comparison: its score rows, the checkpoint
  step they were made from, its Table 2 flags and the run's training record, under the
  `key` of the evaluation that made them (`scores_key`); a record under another key is
  not read."""

  def __init__(self, folder: pathlib.Path, key: dict):
    self.folder, self.key = pathlib.Path(folder), key

  def path(self, label: str) -> pathlib.Path:
    return self.folder / f"{label.replace('/', '.')}.json"

  def read(self, label: str) -> dict | None:
    path = self.path(label)
    if not path.exists():
      return None
    record = json.loads(path.read_text())
    return record if record.get("key") == self.key else None

  def write(self, label: str, method: Method, rows: list[dict], dti_rows: list[dict],
            step: int | None, trained: dict | None) -> dict:
    record = {"label": label, "key": self.key, "checkpoint_step": step, "t1": method.t1,
              "fft_loss": method.fft_loss, "evaluated_at_commit": git_commit(),
              "training_run": trained, "rows": rows, "dti_rows": dti_rows}
    text = files.json_text(record, indent=1, default=str) + "\n"
    with files.write_errors(self.folder):
      self.folder.mkdir(parents=True, exist_ok=True)
    files.write_text(self.path(label), text)
    return json.loads(text)
