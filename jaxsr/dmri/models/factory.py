"""Builds the model a config's `model` section describes, by `model.kind`.

Kinds:
  csr_dmri  arbitrary-scale implicit model (`CSRdMRI`); `in_channels` 2 (DWI + T1)
            or 1 (DWI only, the ArSSR setting). Input: the LR volume.
  dcsrn     fixed-scale `DCSRN`; input: the LR DWI interpolated onto the HR grid.
  rescnn3d  fixed-scale `ResCNN3D`; input as dcsrn.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxsr.dmri.models.baselines import DCSRN, ResCNN3D
from jaxsr.dmri.models.conv import resolve_conv_impl
from jaxsr.dmri.models.csr_dmri import CSRdMRI

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _csr_dmri(config, dtype, conv_impl) -> nn.Module:
  return CSRdMRI(
      num_features=config.num_features, growth=config.growth, num_blocks=config.num_blocks,
      num_layers=config.num_layers, latent_features=config.latent_features,
      mlp_depth=config.mlp_depth, mlp_width=config.mlp_width,
      mlp_skip_after=config.mlp_skip_after,
      mlp_chunk_rows=config.get("mlp_chunk_rows", 0),  # runs saved before the field existed
      coordinates=config.coordinates,
      predict_residual=config.get("predict_residual", False),  # older runs: the field's absence
      dtype=dtype, conv_impl=conv_impl)


def _dcsrn(config, dtype, conv_impl) -> nn.Module:
  return DCSRN(growth=config.growth, num_units=config.num_units, dtype=dtype,
               conv_impl=conv_impl)


def _rescnn3d(config, dtype, conv_impl) -> nn.Module:
  return ResCNN3D(num_features=config.num_features, num_layers=config.num_layers, dtype=dtype,
                  conv_impl=conv_impl)


# The registry: model.kind -> (builder(model config, dtype, conv_impl), whether the kind is
# implicit: queried at coordinates on the LR volume, any scale; else it takes the LR DWI
# interpolated onto the HR grid, at the scale it was trained for, DWI only).
BUILDERS = {"csr_dmri": (_csr_dmri, True), "dcsrn": (_dcsrn, False),
            "rescnn3d": (_rescnn3d, False)}
IMPLICIT_KINDS = tuple(kind for kind, (_, implicit) in BUILDERS.items() if implicit)
INTERPOLATED_INPUT_KINDS = tuple(kind for kind, (_, implicit) in BUILDERS.items() if not implicit)
KINDS = IMPLICIT_KINDS + INTERPOLATED_INPUT_KINDS


def is_implicit(kind: str) -> bool:
  """Whether models of `kind` take the LR volume and are queried at coordinates (any scale)."""
  if kind not in BUILDERS:
    raise ValueError(f"model.kind must be one of {KINDS}, got {kind!r}")
  return BUILDERS[kind][1]


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model of a config's `model` section (`in_channels` is used by the train state's init)."""
  if config.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
  conv_impl = config.get("conv_impl", "auto")  # runs saved before the field existed: auto
  resolve_conv_impl(conv_impl)  # a bad value fails here, not inside a trace
  if not is_implicit(config.kind) and config.in_channels != 1:
    raise ValueError(f"model.kind={config.kind!r} takes the DWI only: in_channels must be 1")
  builder, _ = BUILDERS[config.kind]
  return builder(config, DTYPES[config.dtype], conv_impl)
