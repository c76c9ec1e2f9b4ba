"""Signed FA/MD errors of the shipped general model's 4D output (`jaxsr.dmri.studies.dti_bias`).

  python evaluate.py --config configs/dti_general.py --workdir DIR

On the comparison's embedded test subjects (`configs/compare_dmri.py:quick`'s data),
2x, beside tricubic interpolation. Variants: `default`; `smoke` (tiny data, tests).
`--config.checkpoint=DIR` scores another DWI-only arbitrary-scale model.
"""

import ml_collections

from configs import compare_dmri


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"unknown variant {variant!r}: use default or smoke")
  c = ml_collections.ConfigDict()
  c.task = "dti_bias"
  c.variant = variant
  c.seed = 0
  c.data = compare_dmri.get_config("quick" if variant == "default" else "smoke").data
  c.checkpoint = ""  # "" = the shipped general model
  c.scale = 2.0
  c.dti_volumes = 12  # the shell's volumes spread over the sphere (quick's whole shell)
  c.max_memory = 4 * 2**30
  return c
