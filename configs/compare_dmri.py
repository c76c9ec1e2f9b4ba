"""The dMRI comparison: every method of the CSR-dMRI paper's Tables 1 and 2, trained and evaluated together.

  python train.py    --config configs/compare_dmri.py[:VARIANT] --workdir DIR
  python evaluate.py --config configs/compare_dmri.py[:VARIANT] --workdir DIR

`train.py` trains each run of `runs` in DIR/<name> one after the other (re-running
resumes; finished runs are skipped). `evaluate.py` reads the runs' checkpoints only
and writes DIR/eval/{table1.md, table2.md, dti.md, tables.json, figures/}. To
compare runs trained elsewhere, point `run_dirs.<name>` at their workdirs.

Runs (all on the data of configs/csr_dmri.py for the same variant):
  dcsrn     fixed-scale DCSRN, trained at 2× (configs/dcsrn.py)
  rescnn3d  fixed-scale ResCNN3D, trained at 3× (configs/rescnn3d.py)
  arssr     INR alone: no T1, no FFT loss (configs/arssr.py)
  inr_t1    INR + T1
  inr_fft   INR + FFT loss
  csr_dmri  INR + T1 + FFT loss (configs/csr_dmri.py)
Variants: default (the paper's sizes), quick, smoke (as configs/csr_dmri.py).
"""

import ml_collections

from configs import arssr, csr_dmri, dcsrn, rescnn3d

# Data fields that define the data set and its split (not the patches or scales of a run).
SHARED_DATA_FIELDS = ("source", "root", "cache_dir", "num_subjects", "voxel_size_mm",
                      "num_directions", "snr", "seed", "bval", "bval_tol", "num_val", "num_test")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = csr_dmri.get_config(arg)
  c = ml_collections.ConfigDict()
  c.variant = base.variant
  c.distributed = base.distributed  # call jax.distributed.initialize() for multi-host runs
  inr_t1 = csr_dmri.get_config(arg)
  inr_t1.train.fft_weight = 0.0
  inr_fft = csr_dmri.get_config(arg)
  inr_fft.model.in_channels = 1
  c.runs = ml_collections.ConfigDict({
      "dcsrn": dcsrn.get_config(arg), "rescnn3d": rescnn3d.get_config(arg),
      "arssr": arssr.get_config(arg), "inr_t1": inr_t1, "inr_fft": inr_fft,
      "csr_dmri": csr_dmri.get_config(arg)})
  c.run_dirs = ml_collections.ConfigDict({name: "" for name in c.runs})  # "": DIR/<name>
  c.table1 = ("tricubic", "zero_fill", "dcsrn", "rescnn3d", "arssr", "csr_dmri")
  c.table2 = ("arssr", "inr_t1", "inr_fft", "csr_dmri")
  c.reference = "csr_dmri"  # Wilcoxon tests: this method against each other one
  c.data = base.data  # the data set: every run trains on it, evaluation uses its test subjects
  for run in c.runs.values():  # `--config.data.X=...` reaches every run
    for field in SHARED_DATA_FIELDS:
      run.data[field] = c.data.get_ref(field)
  c.eval = base.eval
  c.eval.num_volumes = {"default": 4, "quick": 4, "smoke": 2}[c.variant]  # scored per subject
  # Scales at which whole shells are super-resolved for FA/MD errors in white matter (each
  # costs num_directions reconstructions per method and subject); quick: the 2.4x figure
  # scale only, to fit a CPU.
  c.eval.dti_scales = (2.4,) if c.variant == "quick" else c.eval.scales
  c.eval.figures = True
  c.eval.figure_scale = 2.4
  c.eval.tile_voxels = 1 << 20  # CNN slabs: a 2 mm brain volume in one pass
  return c
