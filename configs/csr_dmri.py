"""CSR-dMRI configuration.

Variants (`--config configs/csr_dmri.py:VARIANT`):
  default  the paper's setting: RDN 64/64/8×3 → 128 latent, MLP 8×256, batch 9,
           LR 10³ patches, s ~ U(2, 3), Adam 1e-4 halved five times over training
           (the decoder's position input and global residual are jaxsr's: README);
           embedded data at HCP's 1.25 mm (or point `data.source=hcp` or
           `data.source=bids` and `data.root` at real subjects).
  quick    what the README's main line runs: a small model on 2 mm embedded data,
           1200 steps of a cosine schedule from 5e-3 (chosen on the validation
           subject: docs/benchmarks.md, *The README's main line*), the MLP over
           chunks of 4000 queries (faster on a CPU; ImplicitMLP); install to table
           in 4 to 11 minutes on 2 CPU cores, by the machine's hour (docs/benchmarks.md).
  smoke    tiny model and data, train + evaluate in under 2 minutes (tests, CI).
Any field can be overridden: `--config.batch_size=4`, `--config.data.root=/data/hcp`.
"""

import ml_collections

# The quick schedule before the cosine one: what the runs of the quick comparison train with
# (configs/compare_dmri.py; the fixed-scale CNNs over their own steps) and the general model.
QUICK_STAIRCASE = {"train.lr_schedule": "staircase", "train.num_steps": 2400,
                   "train.learning_rate": 1e-3, "train.lr_decay_steps": 800,
                   "train.warmup_steps": 0, "train.checkpoint_every_steps": 400}

# Overrides of the default (paper) setting, by variant.
VARIANTS = {
    "quick": {
        "batch_size": 4,
        "data.num_subjects": 8, "data.voxel_size_mm": 2.0, "data.num_directions": 12,
        "data.num_test": 2, "data.patch_size": 32,
        "data.lr_patch_size": 8,  # HR crops 16..24 voxels: a third of the paper's queries
        "data.num_scale_buckets": 3,  # s in {2, 2.5, 3}: three compiled train steps
        "model.num_features": 16, "model.growth": 16, "model.num_blocks": 3,
        "model.num_layers": 3, "model.latent_features": 32,
        "model.mlp_depth": 6, "model.mlp_width": 64, "model.mlp_skip_after": 3,
        "model.mlp_chunk_rows": 4000,
        "train.lr_schedule": "cosine", "train.num_steps": 1200, "train.learning_rate": 5e-3,
        "train.warmup_steps": 100, "train.log_every_steps": 50,
        "train.checkpoint_every_steps": 300,
        "eval.num_volumes": 2,
    },
    "smoke": {
        "batch_size": 2,
        "data.num_subjects": 3, "data.voxel_size_mm": 6.0, "data.num_directions": 6,
        "data.num_test": 1, "data.patch_size": 16, "data.lr_patch_size": 4,
        "data.num_scale_buckets": 3,
        "model.num_features": 8, "model.growth": 8, "model.num_blocks": 2,
        "model.num_layers": 2, "model.latent_features": 16,
        "model.mlp_depth": 4, "model.mlp_width": 32, "model.mlp_skip_after": 2,
        "train.num_steps": 20, "train.learning_rate": 1e-3, "train.lr_decay_steps": 10,
        "train.log_every_steps": 5, "train.checkpoint_every_steps": 10,
        "eval.num_volumes": 1, "eval.chunk_size": 4096,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant != "default" and variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use default, quick or smoke")
  c = ml_collections.ConfigDict()
  c.task = "dmri"  # one model (jaxsr.registry)
  c.variant = variant
  c.seed = 0
  c.batch_size = 9  # global batch, split over devices (and processes)
  c.distributed = False  # start JAX's distributed runtime: several processes (docs/scaling.md)
  c.distributed_timeout_s = 300  # for all processes to join; a lost one is noticed as late

  c.data = ml_collections.ConfigDict()
  # "embedded": built from the MNI template; "hcp": HCP subject folders under data.root;
  # "bids": the DWI scans (and T1w) of the BIDS dataset at data.root, split by participant.
  c.data.source = "embedded"
  c.data.root = ""  # hcp/bids: the data's folder; embedded: "" = under cache_dir
  c.data.cache_dir = "~/.cache/jaxsr"
  c.data.num_subjects = 16  # embedded build
  c.data.voxel_size_mm = 1.25
  c.data.num_directions = 16
  c.data.snr = 30.0
  c.data.seed = 0
  c.data.bval = 1000.0
  c.data.bval_tol = 100.0
  c.data.num_val = 1
  c.data.num_test = 3
  c.data.patch_size = 40  # HR region (voxels) around a random brain voxel
  c.data.lr_patch_size = 10  # LR patch edge; HR crop is lr_patch_size * s
  c.data.scale_min = 2.0
  c.data.scale_max = 3.0
  c.data.num_scale_buckets = 11  # HR sizes 20..30: at most 11 compiled train steps
  c.data.num_threads = 2
  c.data.prefetch = 4

  c.model = ml_collections.ConfigDict()
  c.model.kind = "csr_dmri"  # see jaxsr.dmri.models.factory
  c.model.in_channels = 2  # LR DWI + LR T1; 1 = DWI only (ArSSR-style ablation)
  c.model.num_features = 64
  c.model.growth = 64
  c.model.num_blocks = 8
  c.model.num_layers = 3
  c.model.latent_features = 128
  c.model.mlp_depth = 8
  c.model.mlp_width = 256
  c.model.mlp_skip_after = 4
  c.model.mlp_chunk_rows = 0  # >0: the MLP over chunks of about this many queries, recomputed in
  #   the backward pass: faster for a narrow MLP on a CPU (quick), not for a wide one (ImplicitMLP)
  c.model.coordinates = "periodic"  # MLP position input: "periodic" (sin, cos of the offset
  #   from the nearest LR voxel centre: the same on patches and whole volumes, continuous across
  #   voxel faces), "local" (that offset) or "global" (c in [-1, 1]); see jaxsr.dmri.models.csr_dmri
  c.model.predict_residual = True  # the MLP predicts the difference from the trilinear
  #   interpolation of the LR DWI (a global residual, not in the paper: False is the paper's
  #   decoder); see jaxsr.dmri.models.csr_dmri and the README
  c.model.dtype = "float32"
  c.model.conv_impl = "auto"  # 3D convs: "auto" (2D-convolution form on CPU, native on GPU/TPU),
  #   "xla" (native) or "depth_taps" (the 2D-convolution form); see jaxsr.dmri.models.conv

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 200_000
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "staircase"  # the paper's halvings; "cosine": warm-up, then to 0 at num_steps
  c.train.lr_decay_steps = 40_000  # staircase
  c.train.lr_decay_factor = 0.5  # staircase
  c.train.warmup_steps = 0  # cosine
  c.train.fft_weight = 0.01
  c.train.augment_flips = False
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 5_000
  c.train.keep_checkpoints = 3  # the latest ones; with validate, the best one is kept too
  c.train.validate = False  # score the validation subjects at every checkpoint (whole volumes,
  #   eval.scales, eval.validation_volumes per subject); the scores rank the checkpoints

  c.eval = ml_collections.ConfigDict()
  c.eval.scales = (2.0, 3.0, 4.0, 2.4)
  c.eval.num_volumes = 4  # b-shell volumes per test subject, spread over the shell; 0: all
  c.eval.split = "test"  # "val": score the validation subjects instead (where choices are made)
  c.eval.checkpoint = "latest"  # "best": the best validation score (train.validate); or a step
  c.eval.validation_volumes = 1  # per validation subject, at each checkpoint of train.validate
  c.eval.chunk_size = 65536  # HR voxels decoded at a time (implicit models)
  c.eval.tile_voxels = 1 << 19  # HR voxels per CNN slab (fixed-scale models)

  c.update_from_flattened_dict(VARIANTS.get(variant, {}))
  return c
