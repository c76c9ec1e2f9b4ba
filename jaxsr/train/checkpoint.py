"""Orbax checkpoints of a training run: state, rng, data-iterator position and config.

Layout: `WORKDIR/checkpoints/<step>/{state, data, config, meta}`. `state` holds
`{'train_state': params + Adam state + step (for MRSI runs a `GANState`: generator
and critic), 'rng': the base PRNG key's uint32 data}`, `data` the
grain iterator state (its position in the seeded batch sequence), `config` the
run's ConfigDict as JSON, so `evaluate.py`, `jaxsr upsample` and later runs can
read it, and `meta` the checkpoint format, the key's PRNG implementation and the
jaxsr version that wrote it (checkpoints without `meta` predate it and are format 1;
format 1 keys are threefry keys).

A checkpoint knows no model: `load_run` rebuilds a run's state through the
family of its model kind, among those it is given (`family_steps`: each family's
`step` module, with `FAMILY`, `MODEL_KINDS`, `build_model` and `create_state`);
`jaxsr.registry.load_run` gives every family's.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import pathlib
import re
import shutil
import sys
from typing import Any, Callable, Sequence

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxsr.train.parameters import count_parameters  # noqa: F401 (re-exported)
from jaxsr.errors import JaxsrError, WriteError
from jaxsr.train import distributed
from jaxsr.train.divergence import all_finite

CHECKPOINT_FORMAT = 2  # bump when the saved items or the state's structure change
READABLE_FORMATS = (1, 2)  # 2 added meta.rng_impl; format 1 keys are threefry2x32
# One compiled check for a whole restored tree: eagerly, each leaf's shape compiled its own
# small programs (seconds per load).
all_finite_jit = jax.jit(all_finite)


class CheckpointError(JaxsrError, ValueError):
  """A run directory without a usable checkpoint; the message is one line naming it."""


# How the array store words a file it cannot read (status codes), as against a shape mismatch.
_STORAGE_ERROR = re.compile(r"\b(DATA_LOSS|NOT_FOUND|OUT_OF_RANGE|UNAVAILABLE|INTERNAL)\b|"
                            r"Error reading|Error opening")


class _NonFinite(ValueError):
  """A checkpoint that restores but holds NaN or infinite values."""


def _reason(error: BaseException) -> str:
  """One short line on why a checkpoint could not be read (orbax raises bare Exceptions)."""
  text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def _version() -> str:
  return importlib.metadata.version("jaxsr")


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints"


def run_dir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, name: str,
            seed: int | None = None) -> pathlib.Path:
  """Workdir of run `name` of a comparison config, trained with `seed` if given.

  `config.run_dirs[name]` if set, else WORKDIR/name; with a seed, its `seed<seed>` subfolder.
  """
  base = pathlib.Path((config.get("run_dirs") or {}).get(name) or pathlib.Path(workdir) / name)
  return base if seed is None else base / f"seed{seed}"


# Validation metric that ranks checkpoints (higher is better); see `Checkpointer.best_step`.
BEST_METRIC = "val_psnr"


def _rank(metrics: dict) -> float:
  return metrics[BEST_METRIC]


def _restore_target(leaf) -> jax.ShapeDtypeStruct:
  """The shape, dtype and placement to restore a leaf into: the given array's, or for an
  abstract leaf (a reader such as evaluation) this process's first device, whatever the
  devices and processes that wrote the checkpoint."""
  target = ocp.utils.to_shape_dtype_struct(leaf)
  if getattr(target, "sharding", None) is not None:
    return target
  return jax.ShapeDtypeStruct(target.shape, target.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` that names this project's items.

  With `keep_best`, checkpoints are saved with validation metrics
  (`save(..., metrics=...)`) and ranked by `BEST_METRIC`: the best one is kept
  besides the `max_to_keep` latest, so a run selected on validation can always be
  evaluated at its best step.
  """

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 3,
               save_interval_steps: int = 1, read_only: bool = False, keep_best: bool = False):
    if read_only:  # e.g. evaluation beside a running training: never write or clean up
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0, max_to_keep=None)
    else:
      policies = ocp.checkpoint_managers
      keep = [policies.LatestN(n=max_to_keep)]
      if keep_best:
        keep.append(policies.BestN(get_metric_fn=_rank, n=1,
                                   keep_checkpoints_without_metrics=False))
      options = ocp.CheckpointManagerOptions(
          save_interval_steps=save_interval_steps, cleanup_tmp_directories=True,
          preservation_policy=policies.AnyPreservationPolicy(keep),
          best_fn=_rank if keep_best else None, best_mode="max")
    self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
    self._in_flight: int | None = None  # the step of the last save started

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def best_step(self) -> int | None:
    """The step with the highest `BEST_METRIC` among the kept checkpoints, None if none has one."""
    scored = {}
    for step in self.manager.all_steps():
      metrics = self.manager.metrics(step)
      if metrics and BEST_METRIC in metrics:
        scored[step] = float(metrics[BEST_METRIC])
    return max(scored, key=lambda s: (scored[s], -s)) if scored else None

  def save(self, step: int, state: Any, rng: jax.Array, data_iterator: grain.DatasetIterator,
           config: ml_collections.ConfigDict, *, force: bool = False,
           metrics: dict | None = None) -> bool:
    """Saves at `step` if the save interval says so (or `force`); returns whether it saved.

    `rng` is a typed key (`jax.random.key`); its data and implementation are stored.
    `metrics` ({name: float}, e.g. validation scores) are stored with the checkpoint.
    """
    try:
      saved = self.manager.save(step, force=force, metrics=metrics, args=ocp.args.Composite(
          state=ocp.args.StandardSave({"train_state": state, "rng": jax.random.key_data(rng)}),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          config=ocp.args.JsonSave(config.to_dict()),
          meta=ocp.args.JsonSave({"format": CHECKPOINT_FORMAT,
                                  "rng_impl": str(jax.random.key_impl(rng)),
                                  "jaxsr_version": _version()})))
    except Exception as error:  # orbax raises what its writers raised (an earlier async save's too)
      raise self._write_error(step, error) from error
    if saved:
      self._in_flight = step
    return saved

  def _write_error(self, step: int, error: BaseException) -> WriteError:
    """The failed save as one line: the asynchronous save in flight if any (its error surfaces
    at the next save or wait), else `step`; orbax's partial folders are removed."""
    failed = self._in_flight if self._in_flight is not None else step
    self._remove_partial_saves()
    return WriteError(f"{self.manager.directory}: could not write checkpoint {failed} "
                      f"({_reason(error)}); the checkpoints before it are kept")

  def _remove_partial_saves(self) -> None:
    """Removes orbax's temporary folders of saves that failed (nothing partial is left)."""
    for path in self.manager.directory.glob("*.orbax-checkpoint-tmp*"):
      shutil.rmtree(path, ignore_errors=True)

  def rng_impl(self, step: int) -> str:
    """PRNG implementation of the key saved at `step` (resumed runs keep drawing from it)."""
    return self.restore_meta(step).get("rng_impl", "threefry2x32")

  def restore(self, step: int, state: Any, rng: jax.Array,
              data_iterator: grain.DatasetIterator | None = None) -> tuple[Any, jax.Array]:
    """Restores (state, rng) shaped/sharded like the given ones; sets `data_iterator` in place.

    `rng` is a typed key of the saved implementation (`rng_impl(step)`), concrete or
    abstract (`jax.eval_shape`); the restored key is of that implementation.
    """
    rng_data = (jax.random.key_data(rng) if isinstance(rng, jax.Array)
                else jax.eval_shape(jax.random.key_data, rng))
    abstract = jax.tree.map(_restore_target, {"train_state": state, "rng": rng_data})
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return (restored.state["train_state"],
            jax.random.wrap_key_data(restored.state["rng"], impl=self.rng_impl(step)))

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)

  def restore_meta(self, step: int) -> dict:
    """The `meta` item of `step` ({"format": 1} for checkpoints written before it existed)."""
    if not (self.manager.directory / str(step) / "meta").exists():
      return {"format": 1}
    return dict(self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def wait(self) -> None:
    """Waits for the asynchronous save in flight; WriteError if it failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as error:
      raise self._write_error(self._in_flight or 0, error) from error
    self._in_flight = None

  def restore_latest_usable(self, restore: Callable[[int], Any], *, set_aside: bool,
                            warn: Callable[[str], None]) -> tuple[int, Any] | None:
    """(step, restore(step)) for the newest checkpoint that restores and holds finite values.

    `restore(step)` restores it (raising on failure). Checkpoints that fail are reported
    with `warn` (one line each: step and reason) and, with `set_aside` (training, which
    saves again at those steps), moved to WORKDIR/checkpoints_unreadable/<step>-<time>
    so nothing is deleted. Returns None if no checkpoint restores.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = restore(step)
        if not bool(distributed.to_host(all_finite_jit(restored))):  # checked where it lies
          raise _NonFinite("non-finite values (saved from a diverged run)")
      except Exception as error:  # a truncated or missing file: orbax raises bare Exceptions
        if not isinstance(error, _NonFinite) and not (
            type(error) is Exception or _STORAGE_ERROR.search(str(error))):
          # Not damage but a different state (e.g. another version's layout): every checkpoint
          # would fail alike, so none is moved.
          raise CheckpointError(f"{self.manager.directory}/{step}: does not restore into this "
                                f"run's state ({_reason(error)})") from error
        where = ""
        if set_aside:
          where = f"; moved to {self.set_aside(step)}"
        warn(f"warning: {self.manager.directory}/{step}: skipped, it cannot be restored "
             f"({_reason(error)}){where}")
        continue
      return step, restored
    return None

  def set_aside(self, step: int) -> pathlib.Path:
    """Moves checkpoint `step` out of checkpoints/ (to checkpoints_unreadable/); returns where."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = self.manager.directory.parent / "checkpoints_unreadable" / f"{step}-{stamp}"
    target.parent.mkdir(exist_ok=True)
    shutil.move(self.manager.directory / str(step), target)
    self.manager.reload()
    return target

  def close(self) -> None:
    self.manager.close()


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A run restored from its latest checkpoint: the config it was trained with, model, variables."""
  config: ml_collections.ConfigDict
  model: object
  variables: dict
  step: int


def model_variables(state) -> dict:
  """The variables a model is applied with, from a train state: its `params` (a GAN state's
  are its generator's) and `batch_stats` where it has non-empty ones."""
  variables = {"params": state.params}
  if getattr(state, "batch_stats", None):
    variables["batch_stats"] = state.batch_stats
  return variables


def _candidate_steps(checkpointer: Checkpointer, run_dir, step: int | str | None) -> list[int]:
  """The steps `load_run` tries, in order: newest first for "latest", best first for "best"."""
  steps = sorted(checkpointer.manager.all_steps(), reverse=True)
  if step in (None, "latest"):
    if not steps:
      raise CheckpointError(f"{run_dir}: no checkpoint found; train first with train.py "
                            f"--workdir {run_dir}")
    return steps
  if step == "best":
    scores = {s: (checkpointer.manager.metrics(s) or {}).get(BEST_METRIC) for s in steps}
    scored = sorted((s for s in steps if scores[s] is not None),
                    key=lambda s: (-float(scores[s]), s))
    if not scored:
      raise CheckpointError(f"{run_dir}: no checkpoint carries a validation score (train "
                            "with --config.train.validate=True, or evaluate the latest)")
    return scored
  if step not in steps:
    raise CheckpointError(f"{run_dir}: no checkpoint at step {step} (there are "
                          f"{sorted(steps)})")
  return [step]


def _load_step(checkpointer: Checkpointer, run_dir, step: int, family_steps) -> TrainedRun:
  """Checkpoint `step` restored into the model its config describes, parameters verified finite."""
  try:
    meta = checkpointer.restore_meta(step)
    config = checkpointer.restore_config(step)
  except Exception as error:  # a missing or truncated file
    raise CheckpointError(f"{run_dir}: checkpoint {step} cannot be read ({_reason(error)})"
                          ) from error
  if meta.get("format") not in READABLE_FORMATS:
    raise CheckpointError(
        f"{run_dir}: checkpoint format {meta.get('format')} (jaxsr "
        f"{meta.get('jaxsr_version', '?')}) cannot be read by jaxsr {_version()}, "
        f"which reads formats {', '.join(map(str, READABLE_FORMATS))}")
  if "kind" not in config.get("model", {}):
    raise CheckpointError(f"{run_dir}: its config has no model.kind (written by an older "
                          "jaxsr); retrain it")
  family_step = next((f for f in family_steps if config.model.kind in f.MODEL_KINDS), None)
  if family_step is None:
    kinds = [kind for f in family_steps for kind in f.MODEL_KINDS]
    raise CheckpointError(f"{run_dir}: a {config.model.kind!r} model, not one this reads "
                          f"({', '.join(kinds)}: "
                          f"{', '.join(f.FAMILY for f in family_steps)} models)")
  try:
    model = family_step.build_model(config.model)
    rng = lambda: jax.random.key(0, impl=checkpointer.rng_impl(step))  # shapes only
    create = lambda: family_step.create_state(config, rng())
    state, _ = checkpointer.restore(step, jax.eval_shape(create), jax.eval_shape(rng))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    if _STORAGE_ERROR.search(str(e)):
      raise CheckpointError(f"{run_dir}: checkpoint {step} cannot be read ({_reason(e)})") from e
    raise CheckpointError(f"{run_dir}: checkpoint {step} does not match the "
                          f"{config.model.kind!r} model its config describes "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
  except Exception as error:  # orbax: a truncated or missing array file
    raise CheckpointError(f"{run_dir}: checkpoint {step} cannot be read ({_reason(error)})"
                          ) from error
  variables = model_variables(state)
  if not bool(all_finite_jit(variables)):
    raise CheckpointError(f"{run_dir}: checkpoint {step} holds non-finite parameters (saved "
                          "from a diverged run); retrain with a lower train.learning_rate")
  return TrainedRun(config, model, variables, step)


def load_run(run_dir: str | pathlib.Path, step: int | str | None = None, *,
             family_steps: Sequence[Any], warn: Callable[[str], None] | None = None) -> TrainedRun:
  """Restores checkpoint `step` of `run_dir` into abstract shapes of its family's state.

  `family_steps`: the `step` modules of the families whose runs may be read; the one
  whose `MODEL_KINDS` holds the run's model kind rebuilds its model and state.

  `step`: an int, None or "latest" (the latest checkpoint), or "best" (the highest
  validation score among the kept checkpoints: runs trained with `train.validate`).
  For "latest" and "best", a checkpoint that cannot be restored (a truncated or
  missing file, non-finite parameters) is skipped with a one-line warning (`warn`,
  default: stderr) and the next one tried: the next older, or the next best.

  Raises:
    CheckpointError: no checkpoint restores: none at all, one written by a newer
      checkpoint format, a config without model.kind or with a kind of another
      family, parameters that do not fit
      the model the config describes (e.g. files from another model or version),
      unreadable files or non-finite parameters. The message is the first
      candidate's reason.
  """
  if not checkpoint_dir(run_dir).is_dir():
    raise CheckpointError(f"{run_dir}: no checkpoints/ folder; train first with train.py "
                          f"--workdir {run_dir}")
  warn = warn or (lambda line: print(line, file=sys.stderr))
  checkpointer = Checkpointer(run_dir, read_only=True)
  try:
    candidates = _candidate_steps(checkpointer, run_dir, step)
    failures = []
    for candidate in candidates:
      try:
        run = _load_step(checkpointer, run_dir, candidate, family_steps)
      except CheckpointError as error:
        failures.append(error)
        continue
      for error in failures:  # said only when an older one is used: else the error says it
        warn(f"warning: {error}; skipped for checkpoint {candidate}")
      return run
    if len(failures) == 1:
      raise failures[0]
    raise CheckpointError(f"{run_dir}: none of its {len(failures)} checkpoints restores "
                          f"(the newest: {failures[0]})")
  finally:
    checkpointer.close()

