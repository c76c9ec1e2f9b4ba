"""The dMRI task: what one run trains on (subject patches or domain-randomised patches), and
the runs of a comparison (`config.runs` × `config.seeds`).

dMRI runs (`model.kind` csr_dmri, dcsrn, rescnn3d) train on HR patches of the
subjects' b-shell volumes (`jaxsr.dmri.data.patches`), optionally validated on the
validation subjects at every checkpoint, or on domain-randomised patches
(`data.source` "randomised", `jaxsr.dmri.data.randomised`). The interface the loop
uses: `MODEL_KINDS`, `build_model`, `make_task`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.dmri import evaluation
from jaxsr.dmri.data import patches, randomised
from jaxsr.dmri.app import pretrained
from jaxsr.dmri import step as step_lib
from jaxsr.dmri.data import subjects as subjects_lib
from jaxsr.dmri.step import MODEL_KINDS, build_model  # noqa: F401 (the family's interface)
from jaxsr.errors import ConfigError
from jaxsr.nifti import DataError
from jaxsr.train.loop import TrainingSetup


def make_sampler(config, train_subjects) -> patches.PatchSampler:
  d = config.data
  sizes = patches.hr_patch_sizes(d.lr_patch_size, d.scale_min, d.scale_max, d.num_scale_buckets)
  return patches.PatchSampler(train_subjects, sizes, patch_size=d.patch_size)


def make_task(config) -> TrainingSetup:
  """What the loop trains for one run config; bad data raises before anything is written."""
  model = build_model(config.model)
  validate = None
  if config.data.source == "randomised":
    sampler = randomised.RandomisedSampler(
        config.data.lr_patch_size, tuple(config.data.axis_scales), tuple(config.data.psfs),
        per_axis_psf=bool(config.data.get("per_axis_psf", False)),
        fine_texture=bool(config.data.get("fine_texture", False)),
        kspace_margin=int(config.data.get("kspace_margin", 0)))
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
  def create_state(rng):
    state = step_lib.create_train_state(model, config, rng)
    init_from = config.train.get("init_from")
    return warm_started(state, init_from) if init_from else state

  if config.train.get("init_from"):
    description += f"; initialised from {config.train.init_from}"
  return TrainingSetup(sampler, create_state, step_lib.make_train_step(config), description,
                       validate)


def warm_started(state, folder: str):
  """`state` with its parameters replaced by those of an exported model: a folder (`jaxsr
  export`), "general" (the shipped model) or the name of a folder shipped beside it
  (`jaxsr/dmri/weights/`); the optimizer starts afresh. ConfigError if they do not fit."""
  if folder == "general":
    folder = str(pretrained.general_model_dir())
  elif (pretrained.WEIGHTS_DIR / folder / "manifest.json").is_file():  # a folder shipped beside it
    folder = str(pretrained.WEIGHTS_DIR / folder)
  _, _, params, _ = pretrained.load(folder)
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
  if (jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(state.params)
      or shapes(params) != shapes(state.params)):
    raise ConfigError(f"train.init_from={folder}: its parameters do not fit this run's model")
  return state.replace(params=jax.tree_util.tree_map(jnp.asarray, params))


def runs(config) -> list[tuple[str, int | None, Any]]:
  """(name, seed, run config) of every run of a comparison config: `config.runs` × `config.seeds`.

  A comparison without `seeds` trains each run once with its own seed (seed None);
  `config.train_runs`, if not empty, keeps only the runs it names.
  """
  chosen = tuple(config.get("train_runs") or config.runs)
  unknown = [name for name in chosen if name not in config.runs]
  if unknown:
    raise ConfigError(f"train_runs: {unknown} are not runs of the config "
                      f"({', '.join(config.runs)})")
  selected = {name: run for name, run in config.runs.items() if name in chosen}
  seeds = config.get("seeds")
  if not seeds:
    return [(name, None, run) for name, run in selected.items()]
  out = []
  for seed in seeds:  # seed-major: a partly trained comparison has every method of seed 0 first
    for name, run in selected.items():
      seeded = run.copy_and_resolve_references()
      seeded.seed = int(seed)
      out.append((name, int(seed), seeded))
  return out
