r"""Evaluates trained runs on the test subjects and prints PSNR/SSIM tables (by `config.task`).

  python evaluate.py --config configs/csr_dmri.py[:VARIANT] --workdir DIR
      one run against tricubic and zero-filling: DIR/eval/table.md, table.json, per_subject.json
  python evaluate.py --config configs/compare_dmri.py[:VARIANT] --workdir DIR
      the comparison (runs in DIR/<name>/seed<s>, each at its best validation checkpoint):
      DIR/eval/table1.md, table2.md, dti.md, tables.json and figures/
  --config.eval.split=val scores the validation subjects instead (DIR/eval/val/), where
  designs are compared; --config.eval.checkpoint=latest|best|STEP picks the checkpoint.
  python evaluate.py --config configs/real_scans.py[:validation] --workdir DIR
      a model (the shipped one unless --config.checkpoint=RUN_DIR) on real scans degraded
      in-plane, through-plane and isotropically with block, Gaussian and k-space PSFs:
      DIR/eval/real_scans_<split>.md and .json
  python evaluate.py --config configs/mrsi.py[:VARIANT] --workdir DIR
      the MRSI study (runs in DIR/fold<f>/<name>): DIR/eval/table1.md, tables.json and
      condition/sharpness figures

--out DIR writes the results to DIR instead of WORKDIR/eval (checked writable first).
Only checkpoints are read (with the config each run was trained with); nothing is retrained.
A checkpoint that cannot be restored (unreadable files, non-finite parameters) is
skipped with a warning for the next older (or next best) one. Failures are one
line (docs/reliability.md): exit 2 for bad input, 1 for a failed write.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxsr import entry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with the test data and evaluation settings, e.g. "
    "configs/csr_dmri.py:quick, configs/compare_dmri.py:quick or configs/mrsi.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory holding checkpoints/ (a comparison: its runs in DIR/<name>).")
_OUT = flags.DEFINE_string(
    "out", None, "Folder for the results (default: WORKDIR/eval).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep library logs (e.g. orbax's notes on
    logging.set_verbosity(logging.ERROR)  # read-only restores) off the progress bar
  from jaxsr import registry  # after the flags are good

  entry.quiet_library_noise()
  config = entry.config_value(_CONFIG)
  texts = []
  code = entry.report_errors(
      lambda: texts.append(registry.evaluate(config, _WORKDIR.value, out=_OUT.value)))
  if texts:
    print(texts[0], end="")
  sys.exit(code)


if __name__ == "__main__":
  app.run(main, flags_parser=entry.parse_flags)
