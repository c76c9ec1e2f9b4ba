"""What a run records in its workdir: run.json (config, seed, versions, commit, so it can be
reproduced) and metrics.jsonl (one JSON line per logged step), and how they are read."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import platform
import subprocess
import sys

import jax

from jaxsr import files

PACKAGES = ("jaxsr", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "numpy", "scipy", "nibabel", "nilearn", "dipy", "ml-collections")


def package_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def git_commit() -> str:
  """The commit of the jaxsr source tree (with '+dirty' for local changes), or 'unknown'."""
  source = pathlib.Path(__file__).resolve().parents[2]
  try:
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                           check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("+dirty" if dirty else "")


def write_run_record(path: str | pathlib.Path, config, **extra) -> dict:
  """Writes `path` (JSON) with the config, seed, versions, commit, command and devices."""
  record = {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": sys.argv,
      "seed": config.get("seed"),
      "git_commit": git_commit(),
      "versions": package_versions(),
      "devices": [str(d) for d in jax.devices()],
      "config": config.to_dict(),
      **extra,
  }
  path = pathlib.Path(path)
  with files.write_errors(path.parent):
    path.parent.mkdir(parents=True, exist_ok=True)
  files.write_json(path, record, default=str)
  return record


METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  """The JSON lines of a metrics file ([] if there is none); a line cut short by a failed
  write is skipped."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def training_seconds(workdir: str | pathlib.Path) -> float:
  """Training time (s) of a run, across resumes: the last metrics line's, 0 if none."""
  records = read_metrics(pathlib.Path(workdir) / METRICS_FILE)
  return float(records[-1].get("elapsed_s", 0.0)) if records else 0.0
