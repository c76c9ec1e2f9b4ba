r"""Evaluates the latest checkpoint of a run on the test subjects and prints a PSNR/SSIM table.

  python evaluate.py --config configs/csr_dmri.py[:VARIANT] --workdir DIR

Writes DIR/eval/table.md, DIR/eval/table.json and DIR/eval/per_subject.json.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxsr import evaluation
from jaxsr.data.nifti import DataError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file the run was trained with, e.g. configs/csr_dmri.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep library INFO logs off the progress bar
    logging.set_verbosity(logging.WARNING)
  try:
    table = evaluation.evaluate(_CONFIG.value, _WORKDIR.value)
  except (DataError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  print(evaluation.markdown_table(table), end="")


if __name__ == "__main__":
  app.run(main)
