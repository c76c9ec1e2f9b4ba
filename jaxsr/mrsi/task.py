"""The MRSI task: the study's runs (methods × folds), their data and their train step.

An MRSI study config (`configs/mrsi.py`, `task = "mrsi"`) names `methods` and
`folds`; `study_runs` expands it into one run config per network:

  fold<f>/<method>                 a multi-scale network, n ~ `data.n_values`, λ = 0
  fold<f>/single_scale_n<n>        Single-scale: an unconditioned network per n
  fold<f>/sharpness_<conditioning> trained with the adversarial loss, λ ~ U(0, λ_max),
                                   for the sharpness study (if `sharpness_method` is set)

Each run config is complete (model, data fold, n values, training), is saved in
the run's checkpoints, and is what `load_run` and evaluation rebuild the network
from. Methods and their generator conditionings: `METHODS`.
"""

from __future__ import annotations

import copy

import ml_collections

from jaxsr.errors import ConfigError
from jaxsr.mrsi import phantom, pipeline
from jaxsr.mrsi import step as step_lib
from jaxsr.mrsi.step import MODEL_KINDS, build_model  # noqa: F401 (the family's interface)
from jaxsr.train.loop import TrainingSetup

# Table 1 rows -> generator conditioning (`jaxsr.mrsi.unet.CONDITIONINGS`).
METHODS = {
    "single_scale": "none",
    "unconditioned": "none",
    "amlayer": "amlayer",
    "hypernetwork": "hypernetwork",
    "filter_scaling": "filter_scaling",
    "filter_scaling_met": "filter_scaling_met",
    "filter_scaling_met_no_anatomy": "filter_scaling_met",  # T1/FLAIR zeroed: what they add
}
STUDY_FIELDS = ("task", "methods", "folds", "sharpness_method", "run_dirs")


def _run(config, *, method: str, conditioning: str, fold: int, n_values, adversarial: bool
         ) -> ml_collections.ConfigDict:
  run = ml_collections.ConfigDict(copy.deepcopy(
      {k: v for k, v in config.to_dict().items() if k not in STUDY_FIELDS}))
  run.method = method
  run.model.conditioning = conditioning
  run.model.anatomy = not method.endswith("_no_anatomy")
  run.data.fold = fold
  run.data.n_values = tuple(int(n) for n in n_values)
  run.train.adversarial = adversarial
  return run


def study_runs(config) -> dict[str, ml_collections.ConfigDict]:
  """{"fold<f>/<name>": run config} of every network the study trains (see the module doc)."""
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ConfigError(f"unknown MRSI methods {unknown}: use {tuple(METHODS)}")
  if config.sharpness_method and config.sharpness_method not in METHODS:
    raise ConfigError(f"sharpness_method must be one of {tuple(METHODS)} or '', got "
                     f"{config.sharpness_method!r}")
  runs = {}
  for fold in config.folds:
    for method in config.methods:
      if method == "single_scale":
        for n in config.data.n_values:
          runs[f"fold{fold}/single_scale_n{n}"] = _run(
              config, method=method, conditioning="none", fold=fold, n_values=(n,),
              adversarial=False)
      else:
        runs[f"fold{fold}/{method}"] = _run(
            config, method=method, conditioning=METHODS[method], fold=fold,
            n_values=config.data.n_values, adversarial=False)
    if config.sharpness_method:
      runs[f"fold{fold}/sharpness_{config.sharpness_method}"] = _run(
          config, method="sharpness", conditioning=METHODS[config.sharpness_method], fold=fold,
          n_values=config.data.n_values, adversarial=True)
  return runs


def load_fold(data_config) -> dict[str, list[phantom.Patient]]:
  """{"train", "val", "test": patients} of fold `data_config.fold` of the embedded patients."""
  patients = phantom.load_patients(data_config.cache_dir, data_config.num_patients,
                                data_config.seed, decoupled=data_config.get("decoupled", True))
  split = phantom.cross_validation_split(data_config.num_patients, data_config.fold,
                                      data_config.num_folds)
  return {name: [patients[i] for i in indices] for name, indices in split.items()}


def make_sampler(config) -> tuple[pipeline.MapSampler, str]:
  """The training-map sampler of a run's fold, and a line describing it."""
  fold = load_fold(config.data)
  sampler = pipeline.MapSampler(fold["train"], config.data.n_values,
                                     max_shift=config.data.max_shift,
                                     augment=config.data.augment)
  return sampler, (f"fold {config.data.fold}: {len(fold['train'])} training patients, "
                   f"{len(sampler)} maps; n in {tuple(config.data.n_values)}; "
                   f"conditioning {config.model.conditioning}"
                   + (", adversarial" if config.train.adversarial else ""))


def runs(config) -> list[tuple[str, None, ml_collections.ConfigDict]]:
  """(name, seed, run config) of every run of a study config (`study_runs`; seeds are in-run)."""
  return [(name, None, run) for name, run in study_runs(config).items()]


def make_task(config) -> TrainingSetup:
  """What the loop trains for one run config; bad data raises before anything is written."""
  sampler, description = make_sampler(config)
  return TrainingSetup(sampler, lambda rng: step_lib.create_state(config, rng),
                       step_lib.make_train_step(config), description)
