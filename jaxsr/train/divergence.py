"""Divergence: a step whose loss, gradients or new state is not finite is not taken.

`keep_finite(train_step)` wraps any pure `(state, batch, rng) -> (state, metrics)`
step: inside the same jitted program it checks every float metric (loss,
gradient norms) and every float leaf of the new state, and if any is NaN or
infinite returns the old state unchanged with `metrics["finite"] = False`. So
the state in memory, and any checkpoint saved from it, is always finite. The
loop reads the flags where it syncs anyway (logging, checkpoints: `first_non_finite`)
and stops with `TrainingDiverged`; there is no extra host sync per step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.train import distributed

FLAG = "finite"


def all_finite(tree: Any) -> jax.Array:
  """True iff every floating-point leaf of `tree` is finite (a scalar bool array)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def keep_finite(train_step: Callable) -> Callable:
  """The step, taken only when its metrics and new state are finite (see the module doc)."""

  def guarded(state, batch, rng):
    new_state, metrics = train_step(state, batch, rng)
    finite = all_finite(metrics) & all_finite(new_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return new_state, {**metrics, FLAG: finite}

  return guarded


def first_non_finite(window: Sequence[dict], first_step: int) -> tuple[int, dict] | None:
  """(step, metrics) of the first step of `window` that was not taken, or None.

  `window` holds the metrics of steps first_step, first_step + 1, ... (device or host arrays).
  """
  flags = distributed.to_host([m[FLAG] for m in window])
  for offset, flag in enumerate(flags):
    if not bool(flag):
      return first_step + offset, {k: float(np.asarray(v)) for k, v in
                                   distributed.to_host(window[offset]).items() if k != FLAG}
  return None
