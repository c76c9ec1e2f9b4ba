"""Counting a model's parameters (light: no checkpoint library, so inference can import it)."""

import jax
import numpy as np


def count_parameters(params) -> int:
  """The number of values in a parameter pytree (arrays or shape structs)."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
