"""ResCNN3D configuration: a fixed-scale (3×) residual CNN on the LR DWI interpolated onto the HR grid.

Data, optimiser and evaluation settings are those of `configs/csr_dmri.py` for the
same variant; the model is ResCNN3D (10 3³ conv layers of 64 channels with ReLU,
a global residual over the interpolated input), trained at s = 3 only, with the
L1 loss. Variants: default, quick, smoke (as csr_dmri).
"""

import ml_collections

from configs import csr_dmri

# Overrides by variant (see configs/dcsrn.py for why quick is small and trained for about
# the wall time of a quick implicit run).
VARIANTS = {
    "quick": {**csr_dmri.QUICK_STAIRCASE, "model.num_features": 16, "model.num_layers": 6},
    "smoke": {"model.num_features": 4, "model.num_layers": 3},
}
SCALE = 3.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = csr_dmri.get_config(arg)
  c.model = ml_collections.ConfigDict(
      {"kind": "rescnn3d", "in_channels": 1, "num_features": 64, "num_layers": 10,
       "dtype": "float32", "conv_impl": "auto"})
  c.data.scale_min = c.data.scale_max = SCALE
  c.data.num_scale_buckets = 1
  c.train.fft_weight = 0.0
  c.update_from_flattened_dict(VARIANTS.get(c.variant, {}))
  return c
