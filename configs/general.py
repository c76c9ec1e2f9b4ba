"""The general model shipped with jaxsr: DWI-only, arbitrary scale, trained on domain-randomised MRI.

`jaxsr upsample` uses it when no `--checkpoint` is given (`jaxsr.dmri.app.pretrained`).
It is the implicit model of `configs/csr_dmri.py:quick` (RDN 16/16/3x3 -> 32,
MLP 6x64, residual decoder) with one input channel, trained on patches rendered
per step from the MNI anatomy with random contrast, noise, geometry, per-axis
factors in [1, 4] and a random PSF (`jaxsr.dmri.data.randomised`), so that it is not
tied to one phantom, one contrast or one degradation. Inputs are scaled by
`data.intensity_percentile` of the volume (`jaxsr.dmri.app.upsample`).

Variants (`--config configs/general.py:VARIANT`):
  default  round one: 16,000 steps, 69 minutes on 2 CPU cores; its checkpoint 8,000
           (chosen on the validation scans, docs/results_real.md) was shipped until
           round two and is where `round2` starts (jaxsr/dmri/weights/general_round1).
  round2   the shipped model's run: round one's weights (`default`'s checkpoint 8,000,
           shipped until round two) fine-tuned on images closer to real scans: PSFs
           drawn per axis (in-plane k-space over half the time, scanners' k-space
           filters), fine texture and small sharp spots (`jaxsr.dmri.data.randomised`), Adam
           3e-4 halved every 3,000 steps, 9,000 steps (34 minutes on 2 CPU cores),
           checkpoints every 500; the shipped weights are its checkpoint 3,000, chosen on
           the validation scans (docs/results_real.md).
  round3   not shipped: round two's weights fine-tuned with k-space truncation in context
           (data.kspace_margin 4: LR voxels of context around k-space-truncated axes),
           Adam 2e-4 halved every 2,000 steps, 6,000 steps (23 minutes on 2 CPU cores);
           no checkpoint beat round two on the validation scans, at c48cdd3 nor with
           the padded fields mended at 9b8fa26 (docs/results_real.md).
  smoke    tiny model, a few steps (tests, CI).
"""

import ml_collections

from configs import csr_dmri

VARIANTS = {
    "round2": {
        "data.per_axis_psf": True, "data.fine_texture": True, "train.init_from": "general_round1",  # round one's weights, shipped beside
        "train.learning_rate": 3e-4, "train.lr_decay_steps": 3_000, "train.num_steps": 9_000,
        "train.checkpoint_every_steps": 500, "train.keep_checkpoints": 18,
    },
    "round3": {
        "data.per_axis_psf": True, "data.fine_texture": True, "data.kspace_margin": 4,
        "train.init_from": "general",  # round two's weights: the shipped model at c48cdd3
        "train.learning_rate": 2e-4, "train.lr_decay_steps": 2_000, "train.num_steps": 6_000,
        "train.checkpoint_every_steps": 500, "train.keep_checkpoints": 12,
    },
    "smoke": {
        "batch_size": 2, "data.lr_patch_size": 4, "data.axis_scales": (1.0, 2.0, 3.0),
        "model.num_features": 8, "model.growth": 8, "model.num_blocks": 2,
        "model.num_layers": 2, "model.latent_features": 16,
        "model.mlp_depth": 4, "model.mlp_width": 32, "model.mlp_skip_after": 2,
        "train.num_steps": 20, "train.lr_decay_steps": 10,
        "train.log_every_steps": 5, "train.checkpoint_every_steps": 10,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant != "default" and variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use default, round2, round3 or smoke")
  c = csr_dmri.get_config("quick")
  c.variant = variant
  c.model.in_channels = 1
  c.data.source = "randomised"
  c.data.lr_patch_size = 8
  c.data.axis_scales = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)  # per-axis factors: 35 HR patch shapes
  c.data.psfs = ("cubic", "block", "gaussian", "kspace")
  c.data.intensity_percentile = 99.0  # inputs divided by this percentile of the volume
  c.data.per_axis_psf = False  # the shipped model's data (round2: True)
  c.data.fine_texture = False
  c.data.kspace_margin = 0  # LR voxels of context around k-space-truncated axes (round3: 4)
  c.train.init_from = ""  # an exported model folder, or one in jaxsr/dmri/weights/
  c.train.num_steps = 16_000  # 69 minutes on 2 CPU cores
  c.train.lr_schedule = "staircase"
  c.train.learning_rate = 1e-3
  c.train.lr_decay_steps = 4_000
  c.train.warmup_steps = 0
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 1_000
  c.train.keep_checkpoints = 16  # checkpoints are chosen on validation scans afterwards
  c.update_from_flattened_dict(VARIANTS.get(variant, {}))
  return c
