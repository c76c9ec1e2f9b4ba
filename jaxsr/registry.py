"""The task registry: what a config's `task` trains and evaluates, and which family does it.

Every config names its task; a task belongs to one family, a package over the
shared core (`jaxsr/<family>/`), whose modules are found by name here and
nowhere else:

  <family>.task        MODEL_KINDS, build_model, make_task (one run), runs (a comparison)
  <family>.step        FAMILY, MODEL_KINDS, build_model, create_state (restoring a run)
  <family>.<module>    an evaluate(config, workdir, out=None) -> report text (`Task.evaluate`)
  <family>.cli         add_commands(subparsers) -> {command: handler} (the `jaxsr` command)

Nothing outside this module and the families branches on the family; the core
(`jaxsr.train`, checkpoints, I/O, metrics) receives a family and imports none.
docs/architecture.md walks through adding a task or a model kind.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from types import ModuleType
from typing import Callable

from jaxsr.errors import ConfigError

FAMILIES = ("dmri", "mrsi")


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: its family, whether its config holds several runs, how it is evaluated.

  Attributes:
    family: the package `jaxsr.<family>`.
    multi_run: the config lists runs (`<family>.task.runs(config)`), each trained in
      its own folder; otherwise the config is one run.
    trains: whether train.py trains it (False: an evaluation of trained models).
    evaluate: "module:function" of the family that scores it.
  """
  family: str
  multi_run: bool = False
  trains: bool = True
  evaluate: str = "evaluation:evaluate"


TASKS = {
    "dmri": Task("dmri"),  # one dMRI model: configs/csr_dmri.py, arssr, dcsrn, rescnn3d, general
    "compare_dmri": Task("dmri", multi_run=True,  # configs/compare_dmri.py: methods × seeds
                         evaluate="evaluation.comparison:evaluate_comparison"),
    "real_scans": Task("dmri", trains=False,  # configs/real_scans.py
                       evaluate="studies.real_scans:evaluate"),
    "dti_bias": Task("dmri", trains=False,  # configs/dti_general.py
                     evaluate="studies.dti_bias:evaluate"),
    "uncertainty": Task("dmri", trains=False,  # configs/uncertainty.py
                        evaluate="studies.uncertainty_study:evaluate"),
    "psf_calibration": Task("dmri", trains=False,  # configs/psf_calibration.py
                            evaluate="studies.psf_calibration:evaluate"),
    "mrsi": Task("mrsi", multi_run=True),  # configs/mrsi.py: methods × folds
}


def task_of(config) -> Task:
  """The `Task` of `config.task`; ConfigError naming the known tasks otherwise."""
  name = config.get("task")
  if name not in TASKS:
    raise ConfigError(f"task={name!r}: must be one of {', '.join(TASKS)}")
  return TASKS[name]


def family_module(family: str, module: str) -> ModuleType:
  """`jaxsr.<family>.<module>`."""
  return importlib.import_module(f"jaxsr.{family}.{module}")


def train(config, workdir: str | pathlib.Path, *, allow_schedule_change: bool = False
          ) -> int | None:
  """Trains the run, or every run, of `config` in `workdir` (`jaxsr.train.loop`); returns the
  final step of a one-run task."""
  from jaxsr.train import loop  # the loop loads JAX; the registry itself stays light

  task = task_of(config)
  if not task.trains:
    raise ConfigError(f"task={config.task!r} evaluates trained models; use evaluate.py")
  family_task = family_module(task.family, "task")
  if not task.multi_run:
    return loop.train(config, workdir, family_task=family_task,
                      allow_schedule_change=allow_schedule_change)
  loop.train_runs(config, family_task.runs(config), workdir, family_task=family_task,
                  allow_schedule_change=allow_schedule_change)
  return None


def evaluate(config, workdir: str | pathlib.Path, out: str | None = None) -> str:
  """Scores what `config` trained in `workdir`; returns the report's text."""
  task = task_of(config)
  module, function = task.evaluate.split(":")
  return getattr(family_module(task.family, module), function)(config, workdir, out=out)


def load_run(run_dir: str | pathlib.Path, step: int | str | None = None, *,
             warn: Callable[[str], None] | None = None):
  """`jaxsr.train.checkpoint.load_run` of a run of any family."""
  from jaxsr.train import checkpoint

  return checkpoint.load_run(run_dir, step, warn=warn,
                             family_steps=[family_module(f, "step") for f in FAMILIES])


def family_clis() -> list[ModuleType]:
  """Every family's `cli` module, in `FAMILIES` order."""
  return [family_module(family, "cli") for family in FAMILIES]
