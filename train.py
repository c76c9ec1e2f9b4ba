r"""Trains a super-resolution model, or every run of a comparison config.

  python train.py --config configs/csr_dmri.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]
  python train.py --config configs/compare_dmri.py[:VARIANT] --workdir DIR   # DIR/<name>/seed<s>
  python train.py --config configs/mrsi.py[:VARIANT] --workdir DIR   # DIR/fold<f>/<method>

Re-running the same command resumes from the latest checkpoint in DIR. Bad input data
stops with a one-line error naming the file (exit code 1) before DIR is written.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxsr.data.nifti import DataError
from jaxsr.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: configs/csr_dmri.py:quick "
    "(configs/compare_dmri.py and configs/mrsi.py train all their runs).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics.jsonl, run.json, eval/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep library INFO logs off the progress bar
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config.distributed:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    if "runs" in config or config.get("task") == "mrsi":
      loop.train_runs(config, _WORKDIR.value)
    else:
      loop.train(config, _WORKDIR.value)
  except DataError as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
