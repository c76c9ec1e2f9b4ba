"""ArSSR configuration: the implicit model of `configs/csr_dmri.py` without the T1 and the FFT loss.

`configs/arssr.py:VARIANT` is csr_dmri's VARIANT with `model.in_channels=1` and
`train.fft_weight=0`: the "INR alone" row of the ablation, trained at s ~ U(2, 3).
The other ablations are csr_dmri with one of the two overrides (configs/compare_dmri.py).
"""

import ml_collections

from configs import csr_dmri


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = csr_dmri.get_config(arg)
  c.model.in_channels = 1
  c.train.fft_weight = 0.0
  return c
