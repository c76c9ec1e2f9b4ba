"""Exported models: parameters, config and run record in one folder, checksummed.

The general model ships inside the package (`jaxsr/dmri/weights/general/`), so a
fresh install can super-resolve without training; `jaxsr upsample --adapt
--save-adapted DIR` writes the same format. A folder holds

  params.msgpack   the parameters (`flax.serialization.to_bytes`);
  config.json      the config the model was trained with (model, data sections);
  manifest.json    {"format", "params_sha256", "step", "source", ...}: what
                   was exported from where; loading checks the checksum;
  run.json         the training run's record (config, seed, versions, commit), if any.

Orbax checkpoints stay the training format (they hold the optimizer state and
the data position for resuming); this one is the few-MB deployment format.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import flax.serialization
import jax
import ml_collections
import numpy as np

from jaxsr.train.parameters import count_parameters
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.models import build_model
from jaxsr.errors import JaxsrError

EXPORT_FORMAT = 1
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"  # jaxsr/dmri/weights
GENERAL_MODEL = "general"
FILES = ("params.msgpack", "config.json", "manifest.json")


class PretrainedError(JaxsrError, ValueError):
  """A missing, incomplete or corrupted exported model; one line naming it."""


def is_exported(path: str | os.PathLike) -> bool:
  """Whether `path` is a folder in this format (has manifest.json)."""
  return (pathlib.Path(path) / "manifest.json").is_file()


def missing_files(folder: pathlib.Path) -> list[str]:
  """The files of this format that `folder` lacks."""
  return [f for f in FILES if not (folder / f).is_file()]


def general_model_dir() -> pathlib.Path:
  """The shipped general model's folder; PretrainedError when the install lacks it."""
  folder = WEIGHTS_DIR / GENERAL_MODEL
  missing = missing_files(folder)
  if missing:
    raise PretrainedError(f"the shipped general model is missing from this install ({folder}: "
                          f"no {', '.join(missing)}); reinstall jaxsr, or give --checkpoint")
  return folder


def sha256(path: str | os.PathLike) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def export(folder: str | os.PathLike, config: ml_collections.ConfigDict, params, *, step: int,
           source: str, run_record: str | os.PathLike | None = None, **extra) -> pathlib.Path:
  """Writes `params` and `config` to `folder` (created; files replaced). Returns the folder."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  params_path = folder / "params.msgpack"
  params_path.write_bytes(flax.serialization.to_bytes(jax.device_get(params)))
  (folder / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  if run_record is not None:
    shutil.copyfile(run_record, folder / "run.json")
  manifest = {"format": EXPORT_FORMAT, "params_sha256": sha256(params_path), "step": int(step),
              "source": str(source),
              "num_parameters": count_parameters(params),
              **extra}
  (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  return folder


def export_run(run_dir: str | os.PathLike, folder: str | os.PathLike, step: int | None = None,
               **extra) -> pathlib.Path:
  """Exports checkpoint `step` (default: the latest) of a training run to `folder`."""
  from jaxsr.train.checkpoint import load_run  # on use: the checkpoint library is slow to import

  run = load_run(run_dir, step, family_steps=[step_lib])
  record = pathlib.Path(run_dir) / "run.json"
  return export(folder, run.config, run.variables["params"], step=run.step,
                source=os.fspath(pathlib.Path(run_dir).absolute()),
                run_record=record if record.is_file() else None, **extra)


def load(folder: str | os.PathLike) -> tuple[ml_collections.ConfigDict, object, dict, dict]:
  """(config, model, params, manifest) of an exported model.

  Raises:
    PretrainedError: missing files, another format, a checksum mismatch, or
      parameters that do not fit the model the config describes.
  """
  folder = pathlib.Path(folder)
  missing = missing_files(folder)
  if missing:
    raise PretrainedError(f"{folder}: not an exported model (no {', '.join(missing)})")
  manifest = json.loads((folder / "manifest.json").read_text())
  if manifest.get("format") != EXPORT_FORMAT:
    raise PretrainedError(f"{folder}: export format {manifest.get('format')}, this jaxsr reads "
                          f"{EXPORT_FORMAT}")
  params_path = folder / "params.msgpack"
  if sha256(params_path) != manifest.get("params_sha256"):
    raise PretrainedError(f"{params_path}: checksum mismatch (the file is corrupted or was "
                          "replaced); reinstall jaxsr or re-export the model")
  config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text()))
  model = build_model(config.model)
  # The parameters' shapes of the run's own initial state (the family's `step`, whatever the
  # model kind), traced: nothing is compiled or initialised.
  expected = jax.eval_shape(lambda: step_lib.create_state(config, jax.random.key(0)).params)
  try:
    params = flax.serialization.msgpack_restore(params_path.read_bytes())
  except ValueError as e:
    raise PretrainedError(f"{params_path}: not a parameter file ({e})") from e
  structure_ok = (jax.tree_util.tree_structure(params)
                  == jax.tree_util.tree_structure(expected))
  if not structure_ok or jax.tree_util.tree_map(np.shape, params) != jax.tree_util.tree_map(
      lambda x: x.shape, expected):
    raise PretrainedError(f"{params_path}: parameter shapes do not fit the model of its "
                          "config.json")
  return config, model, params, manifest
