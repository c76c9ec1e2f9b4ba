"""Resuming a run: the config must be the one its checkpoints were trained with.

A run directory's checkpoints carry their config. Re-running train.py resumes
only if the new config trains the same thing: same architecture, data, seed,
loss and optimiser. Fields that only say how to run (`RUNTIME_FIELDS`: threads,
cache folder, logging, evaluation settings) may differ freely; the schedule
(`SCHEDULE_FIELDS`: steps, learning-rate schedule, checkpoint interval) may
differ only when asked for (`train.py --allow_schedule_change`), e.g. to train
a finished run for longer. Anything else is refused before anything is written,
with the differing keys listed.
"""

from __future__ import annotations

import json
from typing import Any

from jaxsr.errors import ConfigError

RUNTIME_FIELDS = ("variant", "distributed", "distributed_timeout_s", "data.num_threads", "data.prefetch",
                  "data.cache_dir", "train.log_every_steps", "train.keep_checkpoints", "eval.")
SCHEDULE_FIELDS = ("train.num_steps", "train.checkpoint_every_steps", "train.learning_rate",
                   "train.lr_schedule", "train.lr_decay_steps", "train.lr_decay_factor",
                   "train.warmup_steps", "train.validate")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _matches(key: str, fields: tuple[str, ...]) -> bool:
  return any(key == f or (f.endswith(".") and key.startswith(f)) for f in fields)


def config_changes(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{key: (saved value, new value)} of the fields that differ, runtime fields left out.

  Values are compared as JSON (tuples and lists alike). A key the saved config lacks
  (a field added after the run was trained) is not a change: its reader's default applies.
  """
  normal = lambda tree: _flatten(json.loads(json.dumps(tree, default=str)))
  old, now = normal(saved), normal(new)
  return {k: (old.get(k), now.get(k)) for k in sorted(old.keys() | now.keys())
          if k in old and old.get(k) != now.get(k) and not _matches(k, RUNTIME_FIELDS)}


def check_resumable(saved: dict, new: dict, where: str, *, allow_schedule_change: bool) -> None:
  """Raises ConfigError listing the fields of `new` that differ from the run's saved config."""
  changes = config_changes(saved, new)
  schedule = {k: v for k, v in changes.items() if _matches(k, SCHEDULE_FIELDS)}
  refused = {k: v for k, v in changes.items() if k not in schedule or not allow_schedule_change}
  if not refused:
    return
  listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
  hint = ("use a new --workdir for a different run" if set(refused) - set(schedule) else
          "pass --allow_schedule_change to resume with a new schedule")
  raise ConfigError(f"{where}: the config differs from the one its checkpoints were trained "
                    f"with ({listed}); {hint}")
