"""MRSI runs: the study's runs (methods × folds), their data, initial state and train step.

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

import jax
import ml_collections
import optax

from jaxsr.data import mrsi, mrsi_pipeline
from jaxsr.errors import ConfigError
from jaxsr.models import build_model
from jaxsr.models.critic import Critic
from jaxsr.train import mrsi_step

KIND = "mrsi_unet"
# Table 1 rows -> generator conditioning (`jaxsr.models.mrsi_unet.CONDITIONINGS`).
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


def load_fold(data_config) -> dict[str, list[mrsi.Patient]]:
  """{"train", "val", "test": patients} of fold `data_config.fold` of the embedded patients."""
  patients = mrsi.load_patients(data_config.cache_dir, data_config.num_patients,
                                data_config.seed, decoupled=data_config.get("decoupled", True))
  split = mrsi.cross_validation_split(data_config.num_patients, data_config.fold,
                                      data_config.num_folds)
  return {name: [patients[i] for i in indices] for name, indices in split.items()}


def make_sampler(config) -> tuple[mrsi_pipeline.MapSampler, str]:
  """The training-map sampler of a run's fold, and a line describing it."""
  fold = load_fold(config.data)
  sampler = mrsi_pipeline.MapSampler(fold["train"], config.data.n_values,
                                     max_shift=config.data.max_shift,
                                     augment=config.data.augment)
  return sampler, (f"fold {config.data.fold}: {len(fold['train'])} training patients, "
                   f"{len(sampler)} maps; n in {tuple(config.data.n_values)}; "
                   f"conditioning {config.model.conditioning}"
                   + (", adversarial" if config.train.adversarial else ""))


def build_critic(model_config) -> Critic:
  return Critic(channels=tuple(model_config.critic_channels), hidden=model_config.critic_hidden)


def create_state(config, rng: jax.Array) -> mrsi_step.GANState:
  """The generator (the run's `MRSIUNet`) and critic train states: Adam at
  `train.learning_rate`, multiplied by `train.lr_decay_factor` every `train.lr_decay_steps`
  train steps (0: constant), for both networks (the critic updates num_critic times a step)."""
  size = mrsi.MAP_SIZE
  t = config.train

  def schedule(updates_per_step):
    decay_steps = t.get("lr_decay_steps", 0) * updates_per_step
    return (optax.exponential_decay(t.learning_rate, decay_steps, t.lr_decay_factor,
                                    staircase=True) if decay_steps else t.learning_rate)

  return mrsi_step.create_gan_state(build_model(config.model), build_critic(config.model), rng,
                                    (size, size), learning_rate=schedule(1),
                                    critic_learning_rate=schedule(t.num_critic))


def make_train_step(config):
  t = config.train
  return mrsi_step.make_mrsi_train_step(alpha=t.alpha, gp_weight=t.gp_weight,
                                        num_critic=t.num_critic, lambda_max=t.lambda_max,
                                        lambda_zero_fraction=t.get("lambda_zero_fraction", 0.0),
                                        adversarial=t.adversarial)
