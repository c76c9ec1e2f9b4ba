"""Multi-scale MRSI super-resolution with adjustable sharpness: the whole study.

  python train.py    --config configs/mrsi.py[:VARIANT] --workdir DIR
  python evaluate.py --config configs/mrsi.py[:VARIANT] --workdir DIR

`train.py` trains, for every fold of `folds`, one network per method of `methods`
(Single-scale: one per n) with λ = 0, and one network of `sharpness_method` with
the adversarial loss (λ ~ U(0, λ_max)), each in DIR/fold<f>/<name>; re-running
resumes, finished runs are skipped (`jaxsr.mrsi.task`). `evaluate.py`
reads their checkpoints and writes DIR/eval/{table1.md, tables.json, *.png}.
A single network: `--config.methods=filter_scaling_met --config.folds=0
--config.sharpness_method=`.

Variants (`--config configs/mrsi.py:VARIANT`):
  default  the paper: UNet 8…128 channels, batch 8, Adam 1e-4, 100 epochs of the
           ~890 training maps of a fold, 5 folds, all 9 n values.
  quick    fold 0 only, ~8 epochs per network (900 steps, Adam 3e-4), the paper's
           architecture: what docs/results_mrsi.md reports from a 2-core CPU.
  smoke    one-level networks of 4 channels (condition MLPs 2 × 16), two n values,
           4 steps, 5 patients
           (3 train, 1 validation, 1 test per fold): train + evaluate in under
           3 minutes on 2 CPU cores (tests, CI).
"""

import ml_collections

VARIANTS = {
    "quick": {
        "folds": (0,),
        "train.num_steps": 900, "train.learning_rate": 3e-4, "train.lr_decay_steps": 360,
        "train.log_every_steps": 50,
        "train.checkpoint_every_steps": 300,
    },
    "smoke": {
        "folds": (0,), "batch_size": 2,
        "data.num_patients": 5, "data.n_values": (16, 24),  # 3 train / 1 val / 1 test
        "model.channels": (4,), "model.condition_mlp": (2, 16),
        "model.critic_channels": (4, 8), "model.critic_hidden": 8,
        "train.num_steps": 4, "train.num_critic": 2, "train.learning_rate": 1e-3,
        "train.lr_decay_steps": 0,
        "train.log_every_steps": 2, "train.checkpoint_every_steps": 2,
        "eval.max_slices_per_patient": 2, "eval.metabolites": (0, 2),
        "eval.sharpness_lambdas": (0.0, 0.05, 0.1), "eval.figure_lambdas": (0.0, 0.1),
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant != "default" and variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use default, quick or smoke")
  c = ml_collections.ConfigDict()
  c.task = "mrsi"
  c.variant = variant
  c.seed = 0
  c.batch_size = 8  # global batch, split over devices (and processes)
  c.distributed = False  # start JAX's distributed runtime: several processes (docs/scaling.md)
  c.distributed_timeout_s = 300  # for all processes to join; a lost one is noticed as late
  # Table 1 rows (jaxsr.mrsi.task.METHODS), trained with lambda = 0.
  c.methods = ("single_scale", "unconditioned", "amlayer", "hypernetwork", "filter_scaling",
               "filter_scaling_met")
  c.folds = (0, 1, 2, 3, 4)
  c.sharpness_method = "filter_scaling_met"  # also trained with the adversarial loss; "" = none

  c.data = ml_collections.ConfigDict()
  c.data.cache_dir = "~/.cache/jaxsr"  # the simulated patients are built here once
  c.data.num_patients = 15
  c.data.seed = 0
  c.data.num_folds = 5  # 9 train / 3 validation / 3 test patients per fold
  c.data.fold = 0  # set per run by the study
  c.data.n_values = (16, 18, 20, 22, 24, 26, 28, 30, 32)  # acquired matrix sizes (of 64)
  c.data.decoupled = True  # the phantom's anatomy does not give the metabolic lesion away;
  #   False: lesion, maps and T1/FLAIR from the same weights (jaxsr.mrsi.phantom)
  c.data.augment = True  # flips, 90-degree rotations, shifts
  c.data.max_shift = 4  # voxels
  c.data.num_threads = 2
  c.data.prefetch = 4

  c.model = ml_collections.ConfigDict()
  c.model.kind = "mrsi_unet"
  c.model.conditioning = "filter_scaling_met"  # set per run by the study
  c.model.channels = (8, 16, 32, 64, 128)
  c.model.num_metabolites = 7
  c.model.condition_mlp = ()  # (depth, width) of every condition MLP; (): the paper's
  c.model.critic_channels = (16, 32, 64, 128)
  c.model.critic_hidden = 64
  c.model.dtype = "float32"

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 11_000  # ~100 epochs of ~890 maps at batch 8
  c.train.learning_rate = 1e-4
  c.train.lr_decay_steps = 4_400  # halved every 40 epochs, both networks (the authors' code)
  c.train.lr_decay_factor = 0.5
  c.train.alpha = 0.84  # (1 - alpha) L1 + alpha (1 - MS-SSIM)
  c.train.adversarial = False  # set per run by the study
  c.train.lambda_max = 0.1  # lambda ~ U(0, lambda_max) per sample (adversarial runs)
  c.train.lambda_zero_fraction = 0.1  # of the samples get lambda = 0 exactly (the authors' code)
  c.train.gp_weight = 10.0
  c.train.num_critic = 5  # critic updates per generator update
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64  # maps per inference call
  c.eval.max_slices_per_patient = 0  # 0: every usable slice of a test patient
  c.eval.metabolites = (0, 1, 2, 3, 4, 5, 6)  # indices into jaxsr.mrsi.phantom.METABOLITES
  c.eval.sharpness_lambdas = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1)
  c.eval.figure_lambdas = (0.0, 0.03, 0.06, 0.09)

  c.update_from_flattened_dict(VARIANTS.get(variant, {}))
  return c
