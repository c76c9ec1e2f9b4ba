"""The dMRI comparison: every method of the CSR-dMRI paper's Tables 1 and 2, trained and evaluated together.

  python train.py    --config configs/compare_dmri.py[:VARIANT] --workdir DIR
  python evaluate.py --config configs/compare_dmri.py[:VARIANT] --workdir DIR [--config.eval.split=val]

`train.py` trains each run of `runs` once per seed of `seeds`, in DIR/<name>/seed<s>, one
after the other (re-running resumes; finished runs are skipped). Every run scores the
validation subjects at each checkpoint (`train.validate`) and evaluation reads the
checkpoint with the best validation score (`eval.checkpoint=best`), so the test subjects
choose nothing. `evaluate.py` reads the runs' checkpoints only and writes
DIR/eval/{table1.md, table2.md, dti.md, tables.json, figures/} (`eval.split=val`: the
validation subjects, DIR/eval/val/, where designs are compared). To compare runs
trained elsewhere, point `run_dirs.<name>` at a folder holding their seed<s>/ workdirs.

Runs (all on the data of configs/csr_dmri.py for the same variant; quick: 18 subjects,
10 training, 2 validation, 6 test):
  dcsrn             fixed-scale DCSRN, trained at 2× (configs/dcsrn.py)
  rescnn3d          fixed-scale ResCNN3D, trained at 3× (configs/rescnn3d.py)
  dcsrn_matched     DCSRN with about the implicit model's parameters (quick: growth 22)
  rescnn3d_matched  ResCNN3D with about the implicit model's parameters (quick: 8 × 32)
  arssr             INR alone: no T1, no FFT loss (configs/arssr.py)
  inr_t1            INR + T1
  inr_fft           INR + FFT loss
  csr_dmri          INR + T1 + FFT loss (configs/csr_dmri.py)
The size-matched CNNs get about the wall time of an implicit run, not its steps
(`MATCHED_STEPS`, from their measured step times; docs/results_dmri.md).
Variants: default (the paper's sizes; no size-matched runs), quick, smoke (as
configs/csr_dmri.py; one seed, no size-matched runs).
"""

import ml_collections

from configs import arssr, csr_dmri, dcsrn, rescnn3d

# Data fields that define the data set and its split (not the patches or scales of a run).
SHARED_DATA_FIELDS = ("source", "root", "cache_dir", "num_subjects", "voxel_size_mm",
                      "num_directions", "snr", "seed", "bval", "bval_tol", "num_val", "num_test")


# Size-matched fixed-scale CNNs of the quick comparison (parameters within 1.5x of the
# implicit model's 182,977) and their steps: what fits the wall time of a quick implicit
# run (2400 steps) at their measured step times on the 2-core CPU, rounded down to a
# multiple of 6 (docs/results_dmri.md).
MATCHED = {
    "dcsrn_matched": {"model.growth": 22},
    "rescnn3d_matched": {"model.num_features": 32, "model.num_layers": 8},
}
MATCHED_STEPS = {"dcsrn_matched": 720, "rescnn3d_matched": 300}


def matched_run(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A quick size-matched CNN run: `base` widened, trained for about an implicit run's wall time."""
  steps = MATCHED_STEPS[name]
  base.update_from_flattened_dict({
      **MATCHED[name], "train.num_steps": steps, "train.lr_decay_steps": steps // 3,
      "train.checkpoint_every_steps": steps // 6})
  return base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = csr_dmri.get_config(arg)
  c = ml_collections.ConfigDict()
  c.task = "compare_dmri"  # its runs, each a "dmri" task (jaxsr.registry)
  c.variant = base.variant
  c.distributed = base.distributed  # several processes (docs/scaling.md)
  c.distributed_timeout_s = base.distributed_timeout_s
  c.seeds = {"smoke": (0,)}.get(c.variant, (0, 1, 2))  # every run is trained once per seed
  c.train_runs = ()  # the runs train.py trains (e.g. "('arssr','csr_dmri')"); empty: all
  inr_t1 = csr_dmri.get_config(arg)
  inr_t1.train.fft_weight = 0.0
  inr_fft = csr_dmri.get_config(arg)
  inr_fft.model.in_channels = 1
  runs = {"dcsrn": dcsrn.get_config(arg), "rescnn3d": rescnn3d.get_config(arg),
          "arssr": arssr.get_config(arg), "inr_t1": inr_t1, "inr_fft": inr_fft,
          "csr_dmri": csr_dmri.get_config(arg)}
  if c.variant == "quick":  # the implicit runs keep the staircase from 1e-3: the main line's
    #   cosine from 5e-3 (chosen for csr_dmri) let ArSSR diverge (docs/results_dmri.md)
    for name in ("arssr", "inr_t1", "inr_fft", "csr_dmri"):
      runs[name].update_from_flattened_dict(csr_dmri.QUICK_STAIRCASE)
  # Size-matched CNNs in quick only: in default the paper's CNNs (217k, 885k parameters)
  # face a 6.45M-parameter implicit model; in smoke they would equal the others.
  matched = tuple(MATCHED) if c.variant == "quick" else ()
  if matched:
    runs["dcsrn_matched"] = matched_run(dcsrn.get_config(arg), "dcsrn_matched")
    runs["rescnn3d_matched"] = matched_run(rescnn3d.get_config(arg), "rescnn3d_matched")
  c.runs = ml_collections.ConfigDict(runs)
  c.run_dirs = ml_collections.ConfigDict({name: "" for name in c.runs})  # "": DIR/<name>
  c.table1 = ("tricubic", "zero_fill", "dcsrn", "rescnn3d", *matched, "arssr", "csr_dmri")
  c.table2 = ("arssr", "inr_t1", "inr_fft", "csr_dmri")
  c.reference = "csr_dmri"  # Wilcoxon tests: this method against each other one
  c.data = base.data  # the data set: every run trains on it, evaluation uses its test subjects
  if c.variant == "quick":  # enough subjects for a test over subjects (6: p >= 1/32)
    c.data.num_subjects, c.data.num_val, c.data.num_test = 18, 2, 6
  for run in c.runs.values():  # `--config.data.X=...` reaches every run
    for field in SHARED_DATA_FIELDS:
      run.data[field] = c.data.get_ref(field)
    run.train.validate = True  # checkpoints ranked on the validation subjects
    run.train.keep_checkpoints = 1  # the latest (to resume) and the best (to evaluate)
    run.eval.validation_volumes = 1
  c.eval = base.eval
  c.eval.checkpoint = "best"  # the best validation score of each run
  # Per-method score records (jaxsr.dmri.evaluation.records.ScoreRecords), reused while the settings
  # and checkpoint are the same: "" = the output folder's scores/; a folder: its <split>/.
  c.eval.scores_dir = ""
  c.eval.num_volumes = {"default": 4, "quick": 2, "smoke": 2}[c.variant]  # scored per subject
  # FA/MD errors in white matter: tensors fitted at these scales from dti_volumes shell
  # volumes spread over the sphere (each costs that many reconstructions per method, seed and
  # subject; evaluate.py prints the total before it starts). The 2.4x figure scale and 12
  # directions (quick's whole shell) in every variant, so that default fits a CPU too.
  c.eval.dti_scales = (2.4,)
  c.eval.dti_volumes = 12
  c.eval.figures = True
  c.eval.figure_scale = 2.4
  c.eval.tile_voxels = 1 << 20  # CNN slabs: a 2 mm brain volume in one pass
  return c
