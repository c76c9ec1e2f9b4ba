"""DCSRN configuration: a fixed-scale (2×) CNN on the LR DWI interpolated onto the HR grid.

Data, optimiser and evaluation settings are those of `configs/csr_dmri.py` for the
same variant; the model is DCSRN (first conv to 2k = 48 channels, one dense block
of 4 BN → ELU → 3³ conv units with k = 24, output conv to 1 channel), trained
at s = 2 only, with the L1 loss. Variants: default, quick, smoke (as csr_dmri).
"""

import ml_collections

from configs import csr_dmri

# Overrides by variant: quick/smoke shrink the network as csr_dmri's variants do. A
# fixed-scale CNN runs at HR resolution (s³ times the implicit encoder's voxels): the quick
# network is kept small enough to evaluate whole volumes on a laptop CPU, and trained for
# about the wall time of a quick implicit run on 2 CPU cores (more, cheaper steps; the
# measured step times are in docs/results_dmri.md), with the same schedule: the learning
# rate halved every third of the run.
VARIANTS = {
    "quick": {**csr_dmri.QUICK_STAIRCASE, "model.growth": 8, "train.num_steps": 3600,
              "train.lr_decay_steps": 1200, "train.checkpoint_every_steps": 600},
    "smoke": {"model.growth": 4, "model.num_units": 2},
}
SCALE = 2.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = csr_dmri.get_config(arg)
  c.model = ml_collections.ConfigDict(
      {"kind": "dcsrn", "in_channels": 1, "growth": 24, "num_units": 4, "dtype": "float32",
       "conv_impl": "auto"})
  c.data.scale_min = c.data.scale_max = SCALE
  c.data.num_scale_buckets = 1
  c.train.fft_weight = 0.0
  c.update_from_flattened_dict(VARIANTS.get(c.variant, {}))
  return c
