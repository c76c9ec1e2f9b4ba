"""The implicit function network F_theta: a ReLU MLP with a NeRF-style input skip."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype


def chunk_layout(rows: int, chunk_rows: int) -> tuple[int, int]:
  """(chunks, rows per chunk) for `rows` queries in chunks of about `chunk_rows`.

  chunks · rows per chunk ≥ rows, exceeding it by fewer than `chunks` rows (the
  padding). (1, rows) when `chunk_rows` is 0 or the rows fit in one chunk.
  """
  if chunk_rows <= 0 or rows <= chunk_rows:
    return 1, rows
  chunks = round(rows / chunk_rows)  # >= 1: rows > chunk_rows
  return chunks, -(-rows // chunks)


class ImplicitMLP(nn.Module):
  """(..., D) -> (..., 1): `depth` Dense(width) + ReLU layers and a linear Dense(1) head.

  The network input is concatenated onto the activation after the
  `skip_after`-th ReLU (the paper's "residual connection between the input
  and the output of the fourth ReLU"), so layer `skip_after + 1` sees
  width + D features.

  With `chunk_rows`, the queries (all leading axes together) go through the
  network in chunks of about that many rows (`chunk_layout`; the last padded
  with zeros, whose outputs are dropped), one `lax.map` iteration each, and
  under differentiation each chunk's forward pass is recomputed in the backward
  pass (`jax.checkpoint`) instead of stored. The values are the same; what
  changes is memory traffic: a chunk's activations and their gradients stay in
  the CPU's cache. For a narrow MLP on a CPU this is faster (the `quick`
  decoder), for a wide one it is not: the recomputation then costs more than
  the traffic saved (docs/benchmarks.md, *Where the time goes*).

  Attributes:
    depth: number of hidden Dense + ReLU layers.
    width: hidden units per layer.
    skip_after: the input is re-injected after this many ReLUs (0 < skip_after < depth).
    dtype: computation dtype (parameters stay float32).
    chunk_rows: queries per chunk (about); 0: all at once.
  """
  depth: int = 8
  width: int = 256
  skip_after: int = 4
  dtype: Dtype = jnp.float32
  chunk_rows: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not 0 < self.skip_after < self.depth:
      raise ValueError(f"ImplicitMLP needs 0 < skip_after < depth, got "
                       f"skip_after={self.skip_after}, depth={self.depth}")
    rows = math.prod(x.shape[:-1])
    chunks, chunk = chunk_layout(rows, self.chunk_rows)
    if chunks > 1 and not self.is_initializing():
      # The same network as a pure function of its parameters, mapped over the chunks.
      whole = self.clone(parent=None, chunk_rows=0)
      params = self.variables["params"]
      one_chunk = jax.checkpoint(lambda queries: whole.apply({"params": params}, queries))
      flat = x.reshape(rows, x.shape[-1])
      flat = jnp.pad(flat, ((0, chunks * chunk - rows), (0, 0)))
      out = jax.lax.map(one_chunk, flat.reshape(chunks, chunk, x.shape[-1]))
      return out.reshape(chunks * chunk, 1)[:rows].reshape(*x.shape[:-1], 1)
    h = x
    for i in range(self.depth):
      h = nn.relu(nn.Dense(self.width, dtype=self.dtype, name=f"hidden_{i}")(h))
      if i + 1 == self.skip_after:
        h = jnp.concatenate([h, x.astype(h.dtype)], axis=-1)
    return nn.Dense(1, dtype=self.dtype, name="head")(h)
