"""The training loop: data, sharded steps, metrics, progress and resumable checkpoints.

One loop serves every model kind; what differs is a `Task` (`make_task`): the
batch sampler, the initial state and the pure train step. dMRI runs
(`model.kind` csr_dmri, dcsrn, rescnn3d) train on HR patches of the subjects, or
on domain-randomised patches (`data.source` "randomised", `jaxsr.data.randomised`);
MRSI runs (`mrsi_unet`) on metabolite maps of one cross-validation fold
(`jaxsr.train.mrsi_task`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from jaxsr import evaluation, files
from jaxsr.data import pipeline, randomised, subjects as subjects_lib
from jaxsr.data.nifti import DataError
from jaxsr.errors import ConfigError, Interrupted, TrainingDiverged
from jaxsr.models import build_model
from jaxsr.models.factory import KINDS
from jaxsr.train import divergence, interrupt, mrsi_task, resume, step as step_lib
from jaxsr.train.checkpoint import CheckpointError, Checkpointer, run_dir
from jaxsr.train.run_record import write_run_record
from jaxsr.train.workdir_lock import WorkdirLock

# PRNG of new runs. XLA:CPU compiles threefry's random bits slowly (about 1-4 s per
# distinct shape drawn, in every compiled train step and in parameter init); "rbg"
# draws them with XLA's RngBitGenerator in a fraction of that and keeps threefry's
# split/fold_in. A resumed run keeps the implementation it started with.
RNG_IMPL = "rbg"


@dataclasses.dataclass(frozen=True)
class Task:
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


def make_sampler(config, train_subjects) -> pipeline.PatchSampler:
  d = config.data
  sizes = pipeline.hr_patch_sizes(d.lr_patch_size, d.scale_min, d.scale_max, d.num_scale_buckets)
  return pipeline.PatchSampler(train_subjects, sizes, patch_size=d.patch_size)


def make_task(config) -> Task:
  """The task of `config.model.kind`; bad data raises before anything is written."""
  if config.model.kind == mrsi_task.KIND:
    sampler, description = mrsi_task.make_sampler(config)
    return Task(sampler, lambda rng: mrsi_task.create_state(config, rng),
                mrsi_task.make_train_step(config), description)
  model = build_model(config.model)
  validate = None
  if config.data.source == "randomised":
    sampler = randomised.RandomisedSampler(config.data.lr_patch_size,
                                           tuple(config.data.axis_scales),
                                           tuple(config.data.psfs))
    description = (f"domain-randomised patches rendered per step; {len(sampler.hr_shapes)} HR "
                   f"patch shapes (compiled steps) for LR {config.data.lr_patch_size}^3")
  else:
    splits = subjects_lib.load_subjects(config.data)
    sampler = make_sampler(config, splits["train"])
    description = (f"{len(splits['train'])} training subjects, {len(sampler)} (subject, volume) "
                   f"pairs; HR patch sizes {sampler.hr_sizes}")
    if config.train.get("validate"):
      if not splits["val"]:
        raise DataError("train.validate needs validation subjects: set data.num_val >= 1")
      validate = functools.partial(evaluation.validation_scores, config, model, splits["val"])
      description += f"; validated on {', '.join(s.name for s in splits['val'])}"
  return Task(sampler, lambda rng: step_lib.create_train_state(model, config, rng),
              step_lib.make_train_step(config), description, validate)


def per_process_batch_size(batch_size: int) -> int:
  """The global batch split over processes; it must also split evenly over devices."""
  return batch_size // jax.process_count()


def _positive_int(config, key: str) -> None:
  value = config
  for part in key.split("."):
    value = value.get(part) if hasattr(value, "get") else None
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{key}={value!r}: must be a positive integer")


def check_config(config) -> None:
  """ConfigError (one line naming the key) for settings no run can train with."""
  for key in ("batch_size", "train.num_steps", "train.checkpoint_every_steps",
              "train.log_every_steps", "train.keep_checkpoints"):
    _positive_int(config, key)
  if config.batch_size % jax.device_count():
    raise ConfigError(f"batch_size={config.batch_size}: must be a multiple of the device "
                      f"count {jax.device_count()}")
  if not config.train.learning_rate > 0:
    raise ConfigError(f"train.learning_rate={config.train.learning_rate!r}: must be positive")
  kind = config.model.get("kind")
  if kind not in KINDS:
    raise ConfigError(f"model.kind={kind!r}: must be one of {', '.join(KINDS)}")
  try:
    build_model(config.model)
  except ValueError as error:
    raise ConfigError(str(error)) from error


def truncate_metrics(path: pathlib.Path, last_step: int) -> float:
  """Drops metric lines past `last_step` (written by a run that died after its last checkpoint).

  A line cut short by a failed write is dropped too. Returns the training time (s) the
  last kept line records, 0 if none.
  """
  if not path.exists():
    return 0.0
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record["step"] <= last_step:
      kept.append(record)
  files.write_text(path, "".join(files.json_text(m) + "\n" for m in kept))
  return float(kept[-1].get("elapsed_s", 0.0)) if kept else 0.0


def count_parameters(state) -> int:
  """Trained parameters of a train state (of the generator for a GAN state)."""
  params = state.generator.params if hasattr(state, "generator") else state.params
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


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


def train(config, workdir: str | pathlib.Path, *, allow_schedule_change: bool = False) -> int:
  """Trains the model of `config`, resuming from the latest checkpoint in `workdir`.

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
  check_config(config)
  workdir = pathlib.Path(workdir)
  files.check_can_create(workdir)  # before the data is built, without creating DIR
  task = make_task(config)  # bad data fails before DIR is touched
  files.check_writable_folder(workdir)
  with WorkdirLock(workdir):
    return _train_locked(config, task, workdir, allow_schedule_change)


def _train_locked(config, task: Task, workdir: pathlib.Path, allow_schedule_change: bool) -> int:
  checkpointer = Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints,
                              save_interval_steps=config.train.checkpoint_every_steps,
                              keep_best=task.validate is not None)
  try:
    return _train_with(checkpointer, config, task, workdir, allow_schedule_change)
  finally:
    checkpointer.close()


def _train_with(checkpointer: Checkpointer, config, task: Task, workdir: pathlib.Path,
                allow_schedule_change: bool) -> int:
  _check_resume(checkpointer, config, workdir, allow_schedule_change)
  metrics_path = workdir / "metrics.jsonl"
  validation_path = workdir / "validation.jsonl"
  iterator = pipeline.training_batches(
      task.sampler, batch_size=per_process_batch_size(config.batch_size), seed=config.seed,
      shard_index=jax.process_index(), num_shards=jax.process_count(),
      num_threads=config.data.num_threads, prefetch=config.data.prefetch)
  mesh = step_lib.make_mesh()
  rng = jax.random.key(config.seed, impl=RNG_IMPL)
  init_rng, rng = jax.random.split(rng)
  state = step_lib.replicate(task.create_state(init_rng), mesh)
  rng = step_lib.replicate(rng, mesh)

  start_step = 0
  if checkpointer.latest_step() is not None:
    restored = checkpointer.restore_latest_usable(
        lambda step: checkpointer.restore(step, state, _saved_key(checkpointer, step, rng),
                                          iterator),
        set_aside=True, warn=lambda line: tqdm.write(line, file=sys.stderr))
    if restored is None:
      raise CheckpointError(f"{workdir}: no checkpoint can be restored (set aside in "
                            f"{workdir / 'checkpoints_unreadable'}); start a new --workdir")
    start_step, (state, rng) = restored
    state, rng = step_lib.replicate(state, mesh), step_lib.replicate(rng, mesh)
  # A finished run is verified like any other (its newest checkpoint must restore), then left.
  if start_step >= config.train.num_steps:
    tqdm.write(f"{workdir}: already trained to step {start_step}")
    return start_step
  if jax.process_index() == 0:
    write_run_record(workdir / "run.json", config, resumed_from_step=start_step)
  previous_seconds = 0.0  # training time of earlier processes of this run
  if start_step:
    previous_seconds = truncate_metrics(metrics_path, start_step)
    truncate_metrics(validation_path, start_step)
    tqdm.write(f"Resumed from step {start_step} in {workdir}")
  else:
    metrics_path.unlink(missing_ok=True)
    validation_path.unlink(missing_ok=True)
  if jax.process_index() == 0:
    tqdm.write(f"{count_parameters(state):,} parameters; {task.description}; "
               f"{jax.device_count()} device(s)")

  train_step = step_lib.compile_train_step(divergence.keep_finite(task.train_step), mesh)
  log_every = config.train.log_every_steps
  window_metrics, window_voxels, window_start = [], 0, time.perf_counter()
  window_first = start_step + 1  # the step the window's first metrics belong to
  train_start = window_start
  last_saved = start_step

  def check_window():
    """TrainingDiverged if a step of the window was not taken (read where the loop syncs)."""
    bad = divergence.first_non_finite(window_metrics, window_first)
    if bad is not None:
      step, values = bad
      shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items()
                        if k in ("loss", "grad_norm", "critic_loss"))
      kept = f"the last checkpoint is step {last_saved}" if last_saved else "none was saved"
      raise TrainingDiverged(
          f"{workdir}: training diverged at step {step} ({shown}); stopped without saving "
          f"it, {kept}; lower train.learning_rate and train in a new --workdir")

  progress = tqdm(total=config.train.num_steps, initial=start_step, desc="train",
                  disable=jax.process_index() != 0, dynamic_ncols=True)
  with files.write_errors(metrics_path):
    metrics_file = metrics_path.open("a")
  with progress, metrics_file, interrupt.stop_requests() as stop:
    for step in range(start_step, config.train.num_steps):
      batch = next(iterator)
      state, metrics = train_step(state, step_lib.shard_batch(batch, mesh),
                                  jax.random.fold_in(rng, step))
      window_metrics.append(metrics)
      window_voxels += batch["hr"].size * jax.process_count()
      done = step + 1
      final = done == config.train.num_steps
      stopping = bool(stop)  # read once: a signal arriving later is seen after the next step
      if done % log_every == 0 or final or stopping:
        check_window()
        summary = {k: float(np.mean([m[k] for m in jax.device_get(window_metrics)]))
                   for k in window_metrics[0] if k != divergence.FLAG}
        elapsed = time.perf_counter() - window_start
        summary.update(step=done, voxels_per_s=window_voxels / elapsed,
                       elapsed_s=previous_seconds + time.perf_counter() - train_start)
        with files.write_errors(metrics_path):
          metrics_file.write(files.json_text(summary) + "\n")
          metrics_file.flush()
        progress.set_postfix(loss=f"{summary['loss']:.4g}", vox_s=f"{summary['voxels_per_s']:.3g}")
        window_metrics, window_voxels, window_start = [], 0, time.perf_counter()
        window_first = done + 1
      progress.update(1)
      saving = final or stopping or checkpointer.should_save(done)
      if saving:
        check_window()  # never save a state after a step that was not taken
      validation = None
      # Validated: the checkpoints of the save interval and the last (not the one orbax
      # also writes at the first step, nor one saved because of a signal).
      if task.validate is not None and (final or (
          done % config.train.checkpoint_every_steps == 0 and checkpointer.should_save(done))):
        validation_start = time.perf_counter()
        validation = task.validate(state)
        # Validation is not training: keep it out of the throughput and the training time.
        validation_seconds = time.perf_counter() - validation_start
        window_start += validation_seconds
        train_start += validation_seconds
        if jax.process_index() == 0:
          with files.write_errors(validation_path), validation_path.open("a") as f:
            f.write(files.json_text({"step": done, **validation}) + "\n")
        progress.set_postfix(val_psnr=f"{validation['val_psnr']:.3f}")
      if checkpointer.save(done, state, rng, iterator, config, force=final or stopping,
                           metrics=validation):
        last_saved = done
      if stopping and not final:
        checkpointer.wait()
        name = interrupt.signal_name(stop[0])
        raise Interrupted(f"{workdir}: stopped by {name} after step {done}; checkpoint {done} "
                          "saved; re-run the same command to resume", stop[0])
  checkpointer.wait()
  return config.train.num_steps


def _saved_key(checkpointer: Checkpointer, step: int, like: jax.Array) -> jax.Array:
  """An abstract key of the implementation saved at `step` (runs keep the one they began with)."""
  impl = checkpointer.rng_impl(step)
  if impl == str(jax.random.key_impl(like)):
    return like
  return jax.eval_shape(lambda: jax.random.key(0, impl=impl))


def comparison_runs(config) -> list[tuple[str, int | None, Any]]:
  """(name, seed, run config) of every run of a comparison config: `config.runs` × `config.seeds`.

  A comparison without `seeds` trains each run once with its own seed (seed None).
  """
  seeds = config.get("seeds")
  if not seeds:
    return [(name, None, run) for name, run in config.runs.items()]
  out = []
  for seed in seeds:  # seed-major: a partly trained comparison has every method of seed 0 first
    for name, run in config.runs.items():
      seeded = run.copy_and_resolve_references()
      seeded.seed = int(seed)
      out.append((name, int(seed), seeded))
  return out


def train_runs(config, workdir: str | pathlib.Path, *, allow_schedule_change: bool = False
               ) -> None:
  """Trains every run of a comparison config in turn, each in its own workdir.

  The runs are `config.runs` × `config.seeds` (the dMRI comparison: WORKDIR/<name>/seed<s>),
  or those of an MRSI study (`config.task == "mrsi"`, `jaxsr.train.mrsi_task.study_runs`:
  methods × folds). `config.run_dirs[name]`, if set, replaces WORKDIR/<name>; finished
  runs are skipped and interrupted ones resume. Every run's config is checked before
  the first trains; WORKDIR is locked as each run's folder is (`train`).
  """
  if config.get("task") == "mrsi":
    runs = [(name, None, run) for name, run in mrsi_task.study_runs(config).items()]
  else:
    runs = comparison_runs(config)
  for _, _, run_config in runs:
    check_config(run_config)
  files.check_writable_folder(workdir)
  with WorkdirLock(workdir):
    for name, seed, run_config in runs:
      directory = run_dir(config, workdir, name, seed)
      tqdm.write(f"== {name}{'' if seed is None else f' (seed {seed})'} "
                 f"({run_config.model.kind}) -> {directory}")
      train(run_config, directory, allow_schedule_change=allow_schedule_change)
