"""The training loop: data, sharded steps, metrics, progress and resumable checkpoints.

One loop serves every family; what differs is the `TrainingSetup` a family makes of a run
config: the batch sampler, the initial state and the pure train step, and
optionally a validation. The family is passed in (`family_task`: its `task` module,
with `MODEL_KINDS`, `build_model` and `make_task`); the loop imports none
(`jaxsr.registry` picks it from the config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from jaxsr import files
from jaxsr.errors import ConfigError, Interrupted, TrainingDiverged
from jaxsr.train import batches, distributed, divergence, interrupt, resume, run_record, sharding
from jaxsr.train.checkpoint import Checkpointer, CheckpointError, count_parameters, run_dir
from jaxsr.train.workdir_lock import WorkdirLock

# PRNG of new runs. XLA:CPU compiles threefry's random bits slowly (for every distinct
# shape drawn, in every compiled train step and in parameter init; docs/design.md); "rbg"
# draws them with XLA's RngBitGenerator and keeps threefry's split/fold_in. A resumed run
# keeps the implementation it started with.
RNG_IMPL = "rbg"


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """What the loop trains.

  Attributes:
    sampler: `len()` training examples; `sampler(indices, rng)` -> numpy batch dict
      with "hr" (the target, whose size counts the voxels/s).
    create_state: rng -> initial train state (a pytree).
    train_step: the pure `(state, batch, rng) -> (state, metrics)`.
    description: one line on the data, printed when training starts.
    validate: state -> {metric: float} on the validation split, run before each
      checkpoint is saved and stored with it (None: no validation).
  """
  sampler: Any
  create_state: Callable[[jax.Array], Any]
  train_step: Callable
  description: str
  validate: Callable[[Any], dict] | None = None


def _positive_int(config, key: str) -> None:
  value = config
  for part in key.split("."):
    value = value.get(part) if hasattr(value, "get") else None
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{key}={value!r}: must be a positive integer")


def check_config(config, family_task) -> None:
  """ConfigError (one line naming the key) for settings no run of the family (its `task`
  module, `family_task`) can train with."""
  for key in ("batch_size", "train.num_steps", "train.checkpoint_every_steps",
              "train.log_every_steps", "train.keep_checkpoints"):
    _positive_int(config, key)
  if config.batch_size % jax.device_count():
    raise ConfigError(f"batch_size={config.batch_size}: must be a multiple of the device "
                      f"count {jax.device_count()}")
  if not config.train.learning_rate > 0:
    raise ConfigError(f"train.learning_rate={config.train.learning_rate!r}: must be positive")
  kind = config.model.get("kind")
  if kind not in family_task.MODEL_KINDS:
    raise ConfigError(f"model.kind={kind!r}: must be one of {', '.join(family_task.MODEL_KINDS)}")
  try:
    family_task.build_model(config.model)
  except ValueError as error:
    raise ConfigError(str(error)) from error


def truncate_metrics(path: pathlib.Path, last_step: int) -> float:
  """Drops metric lines past `last_step` (written by a run that died after its last checkpoint).

  A line cut short by a failed write is dropped too. Returns the training time (s) the
  last kept line records, 0 if none.
  """
  if not path.exists():
    return 0.0
  kept = [record for record in run_record.read_metrics(path) if record["step"] <= last_step]
  files.write_text(path, "".join(files.json_text(m) + "\n" for m in kept))
  return float(kept[-1].get("elapsed_s", 0.0)) if kept else 0.0


def _check_resume(checkpointer: Checkpointer, config, workdir: pathlib.Path,
                  allow_schedule_change: bool) -> None:
  """ConfigError if `config` does not train what the run's newest readable config says."""
  for step in sorted(checkpointer.manager.all_steps(), reverse=True):
    try:
      saved = checkpointer.restore_config(step).to_dict()
    except Exception:  # an unreadable checkpoint: the restore reports and skips it
      continue
    resume.check_resumable(saved, config.to_dict(), str(workdir),
                           allow_schedule_change=allow_schedule_change)
    return


def train(config, workdir: str | pathlib.Path, *, family_task,
          allow_schedule_change: bool = False) -> int:
  """Trains the model of `config`, resuming from the latest checkpoint in `workdir`.

  `family_task` is the run's family: its `task` module (`MODEL_KINDS`, `build_model`,
  `make_task(config) -> TrainingSetup`).

  Writes `workdir/run.json` (config, seed, versions, commit), `workdir/metrics.jsonl`
  (one JSON line per logged step) and orbax checkpoints under `workdir/checkpoints`.
  A run already at `train.num_steps` is left as it is. Returns the final step.

  Faults (docs/reliability.md): bad config or data raise before `workdir` is
  written; another live process training `workdir` raises WorkdirBusy; a resume
  whose config differs from the checkpoints' raises ConfigError (schedule fields
  may change with `allow_schedule_change`); checkpoints that cannot be restored
  are set aside and the newest usable one resumed; a non-finite step stops
  training with TrainingDiverged (no such checkpoint is saved); SIGINT/SIGTERM
  save the current step and raise Interrupted; failed writes raise WriteError.
  """
  check_config(config, family_task)
  workdir = pathlib.Path(workdir)
  files.check_can_create(workdir)  # before the data is built, without creating DIR
  task = family_task.make_task(config)  # bad data fails before DIR is touched
  files.check_writable_folder(workdir)
  # Process 0 holds the lock for all processes of a distributed run (they share DIR).
  with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    return _train_locked(config, task, workdir, allow_schedule_change)


def _train_locked(config, task: TrainingSetup, workdir: pathlib.Path,
                  allow_schedule_change: bool) -> int:
  checkpointer = Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints,
                              save_interval_steps=config.train.checkpoint_every_steps,
                              keep_best=task.validate is not None)
  try:
    return _train_with(checkpointer, config, task, workdir, allow_schedule_change)
  finally:
    checkpointer.close()


def _train_with(checkpointer: Checkpointer, config, task: TrainingSetup, workdir: pathlib.Path,
                allow_schedule_change: bool) -> int:
  """Trains `task` to `train.num_steps` from the newest usable checkpoint; returns the step."""
  _check_resume(checkpointer, config, workdir, allow_schedule_change)
  iterator = batches.training_batches(
      task.sampler, batch_size=config.batch_size, seed=config.seed,
      shard_index=jax.process_index(), num_shards=jax.process_count(),
      num_threads=config.data.num_threads, prefetch=config.data.prefetch)
  mesh = sharding.make_mesh()
  rng = jax.random.key(config.seed, impl=RNG_IMPL)
  init_rng, rng = jax.random.split(rng)
  state = sharding.replicate(task.create_state(init_rng), mesh)
  rng = sharding.replicate(rng, mesh)

  start_step, state, rng = _resume(checkpointer, workdir, state, rng, iterator, mesh)
  # A finished run is verified like any other (its newest checkpoint must restore), then left.
  if start_step >= config.train.num_steps:
    tqdm.write(f"{workdir}: already trained to step {start_step}")
    return start_step
  records = _RunRecords.start(config, workdir, start_step,
                              f"{count_parameters(state.params):,} parameters; "
                              f"{task.description}")
  train_step = sharding.compile_train_step(divergence.keep_finite(task.train_step), mesh)
  window = _MetricsWindow(start_step, records.previous_seconds, workdir)
  progress = tqdm(total=config.train.num_steps, initial=start_step, desc="train",
                  disable=jax.process_index() != 0, dynamic_ncols=True)
  with progress, records, interrupt.stop_requests() as stop:
    for step in range(start_step, config.train.num_steps):
      batch = next(iterator)
      step_args = (state, sharding.shard_batch(batch, mesh), jax.random.fold_in(rng, step))
      if step == start_step:
        distributed.compile_and_wait_for_all(train_step, *step_args, name=f"first_step_{step}",
                                             timeout=distributed.timeout_s(config))
      state, metrics = train_step(*step_args)
      window.add(metrics, batch["hr"].size * jax.process_count())
      done = step + 1
      final = done == config.train.num_steps
      stopping = bool(stop)  # read once: a signal arriving later is seen after the next step
      if done % config.train.log_every_steps == 0 or final or stopping:
        summary = window.close(done)
        records.write_metrics(summary)
        progress.set_postfix(loss=f"{summary['loss']:.4g}",
                             vox_s=f"{summary['voxels_per_s']:.3g}")
      progress.update(1)
      if final or stopping or checkpointer.should_save(done):
        window.check()  # never save a state after a step that was not taken
      validation = None
      # Validated: the checkpoints of the save interval and the last (not the one orbax
      # also writes at the first step, nor one saved because of a signal).
      if task.validate is not None and (final or (
          done % config.train.checkpoint_every_steps == 0 and checkpointer.should_save(done))):
        began = time.perf_counter()
        validation = task.validate(state)
        window.exclude(time.perf_counter() - began)  # validating is not training
        records.write_validation(done, validation)
        progress.set_postfix(val_psnr=f"{validation['val_psnr']:.3f}")
      if checkpointer.save(done, state, rng, iterator, config, force=final or stopping,
                           metrics=validation):
        window.last_saved = done
      if stopping and not final:
        checkpointer.wait()
        name = interrupt.signal_name(stop[0])
        raise Interrupted(f"{workdir}: stopped by {name} after step {done}; checkpoint {done} "
                          "saved; re-run the same command to resume", stop[0])
  checkpointer.wait()
  return config.train.num_steps


class _RunRecords:
  """A run's metrics.jsonl and validation.jsonl: process 0 writes them (from the start, or
  truncated to the step a resumed run starts from); the other processes write nowhere.

  Attributes:
    previous_seconds: the training time of the run's earlier processes (a resumed run).
  """

  def __init__(self, metrics_path: pathlib.Path, validation_path: pathlib.Path,
               previous_seconds: float):
    self.metrics_path, self.validation_path = metrics_path, validation_path
    self.previous_seconds = previous_seconds

  @classmethod
  def start(cls, config, workdir: pathlib.Path, start_step: int, description: str
            ) -> "_RunRecords":
    """The records of a run starting (or resuming) at `start_step`, with run.json written and
    the run described in one line."""
    metrics_path = workdir / run_record.METRICS_FILE
    validation_path = workdir / "validation.jsonl"
    if jax.process_index() != 0:  # the run's records are process 0's to write
      return cls(pathlib.Path(os.devnull), pathlib.Path(os.devnull), 0.0)
    run_record.write_run_record(workdir / "run.json", config, resumed_from_step=start_step)
    previous_seconds = 0.0
    if start_step:
      previous_seconds = truncate_metrics(metrics_path, start_step)
      truncate_metrics(validation_path, start_step)
      tqdm.write(f"Resumed from step {start_step} in {workdir}")
    else:
      metrics_path.unlink(missing_ok=True)
      validation_path.unlink(missing_ok=True)
    tqdm.write(f"{description}; {jax.device_count()} device(s) in {jax.process_count()} "
               "process(es)")
    return cls(metrics_path, validation_path, previous_seconds)

  def __enter__(self) -> "_RunRecords":
    with files.write_errors(self.metrics_path):
      self._metrics = self.metrics_path.open("a")
    return self

  def __exit__(self, *error) -> None:
    self._metrics.close()

  def write_metrics(self, summary: dict) -> None:
    with files.write_errors(self.metrics_path):
      self._metrics.write(files.json_text(summary) + "\n")
      self._metrics.flush()

  def write_validation(self, step: int, validation: dict) -> None:
    if jax.process_index() == 0:
      with files.write_errors(self.validation_path), self.validation_path.open("a") as f:
        f.write(files.json_text({"step": step, **validation}) + "\n")


class _MetricsWindow:
  """The steps since the last metrics line: their metrics (device arrays, read when the line
  is written), HR voxels and time; and the divergence check over them."""

  def __init__(self, start_step: int, previous_seconds: float, workdir: pathlib.Path):
    self.metrics, self.voxels, self.start = [], 0, time.perf_counter()
    self.first = start_step + 1  # the step the window's first metrics belong to
    self.train_start = self.start
    self.previous_seconds = previous_seconds
    self.last_saved = start_step
    self.workdir = workdir

  def add(self, metrics: dict, voxels: int) -> None:
    self.metrics.append(metrics)
    self.voxels += voxels

  def exclude(self, seconds: float) -> None:
    """Keeps `seconds` (e.g. validation) out of the throughput and the training time."""
    self.start += seconds
    self.train_start += seconds

  def check(self) -> None:
    """TrainingDiverged if a step of the window was not taken (read where the loop syncs)."""
    bad = divergence.first_non_finite(self.metrics, self.first)
    if bad is not None:
      step, values = bad
      shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items()
                        if k in ("loss", "grad_norm", "critic_loss"))
      kept = (f"the last checkpoint is step {self.last_saved}" if self.last_saved
              else "none was saved")
      raise TrainingDiverged(
          f"{self.workdir}: training diverged at step {step} ({shown}); stopped without saving "
          f"it, {kept}; lower train.learning_rate and train in a new --workdir")

  def close(self, step: int) -> dict:
    """Checks the window, then its metrics line at `step` (`_window_summary`); a new window
    begins."""
    self.check()
    now = time.perf_counter()
    summary = _window_summary(self.metrics, step, self.voxels, now - self.start,
                              self.previous_seconds + now - self.train_start)
    self.metrics, self.voxels, self.start = [], 0, time.perf_counter()
    self.first = step + 1
    return summary


def _resume(checkpointer: Checkpointer, workdir: pathlib.Path, state, rng, iterator, mesh):
  """(start step, state, rng): the newest usable checkpoint's, with the data iterator moved to
  its position (unusable ones set aside), or (0, state, rng) for a new run."""
  if checkpointer.latest_step() is None:
    return 0, state, rng
  restored = checkpointer.restore_latest_usable(
      lambda step: checkpointer.restore(step, state, _saved_key(checkpointer, step, rng),
                                        iterator),
      set_aside=jax.process_index() == 0,  # the others find the same checkpoints unreadable
      warn=lambda line: tqdm.write(line, file=sys.stderr))
  if restored is None:
    raise CheckpointError(f"{workdir}: no checkpoint can be restored (set aside in "
                          f"{workdir / 'checkpoints_unreadable'}); start a new --workdir")
  start_step, (state, rng) = restored
  return start_step, sharding.replicate(state, mesh), sharding.replicate(rng, mesh)


def _window_summary(window_metrics: list[dict], step: int, voxels: int, window_seconds: float,
                    training_seconds: float) -> dict:
  """One metrics.jsonl line: the window's mean metrics, its throughput and the training time."""
  window = distributed.to_host(window_metrics)  # one transfer for every metric of the window
  summary = {k: float(np.mean([m[k] for m in window])) for k in window[0] if k != divergence.FLAG}
  summary.update(step=step, voxels_per_s=voxels / window_seconds, elapsed_s=training_seconds)
  return summary


def _saved_key(checkpointer: Checkpointer, step: int, like: jax.Array) -> jax.Array:
  """An abstract key of the implementation saved at `step` (runs keep the one they began with)."""
  impl = checkpointer.rng_impl(step)
  if impl == str(jax.random.key_impl(like)):
    return like
  return jax.eval_shape(lambda: jax.random.key(0, impl=impl))


def train_runs(config, runs: list[tuple[str, int | None, Any]], workdir: str | pathlib.Path, *,
               family_task, allow_schedule_change: bool = False) -> None:
  """Trains every run of a comparison or study config in turn, each in its own workdir.

  `runs` are (name, seed or None, run config), e.g. the dMRI comparison's methods ×
  seeds (WORKDIR/<name>/seed<s>) or an MRSI study's methods × folds
  (WORKDIR/fold<f>/<name>). `config.run_dirs[name]`, if set, replaces
  WORKDIR/<name>; finished runs are skipped and interrupted ones resume. Every run's
  config is checked before the first trains; WORKDIR is locked as each run's folder
  is (`train`).
  """
  for _, _, run_config in runs:
    check_config(run_config, family_task)
  files.check_writable_folder(workdir)
  with WorkdirLock(workdir):
    for name, seed, run_config in runs:
      directory = run_dir(config, workdir, name, seed)
      tqdm.write(f"== {name}{'' if seed is None else f' (seed {seed})'} "
                 f"({run_config.model.kind}) -> {directory}")
      train(run_config, directory, family_task=family_task,
            allow_schedule_change=allow_schedule_change)
