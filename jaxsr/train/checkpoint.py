"""Orbax checkpoints of a training run: state, rng, data-iterator position and config.

Layout: `WORKDIR/checkpoints/<step>/{state, data, config}`. `state` holds
`{'train_state': params + Adam state + step, 'rng': base PRNG key}`, `data` the
grain iterator state (its position in the seeded batch sequence) and `config`
the run's ConfigDict as JSON, so `evaluate.py` and later runs can read it.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints"


def run_dir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            name: str) -> pathlib.Path:
  """Workdir of run `name` of a comparison config: `config.run_dirs[name]` if set, else WORKDIR/name."""
  return pathlib.Path(config.run_dirs.get(name) or pathlib.Path(workdir) / name)


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` that names this project's items."""

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 3,
               save_interval_steps: int = 1, read_only: bool = False):
    if read_only:  # e.g. evaluation beside a running training: never write or clean up
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0, max_to_keep=None)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
          cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, rng: Any, data_iterator: grain.DatasetIterator,
           config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
    """Saves at `step` if the save interval says so (or `force`); returns whether it saved."""
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"train_state": state, "rng": rng}),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())))

  def restore(self, step: int, state: Any, rng: Any,
              data_iterator: grain.DatasetIterator | None = None) -> tuple[Any, Any]:
    """Restores (state, rng) shaped/sharded like the given ones; sets `data_iterator` in place."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"train_state": state, "rng": rng})
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored.state["train_state"], restored.state["rng"]

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
