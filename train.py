r"""Trains a super-resolution model, or every run of a comparison config (by `config.task`).

  python train.py --config configs/csr_dmri.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]
  python train.py --config configs/compare_dmri.py[:VARIANT] --workdir DIR   # DIR/<name>/seed<s>
  python train.py --config configs/mrsi.py[:VARIANT] --workdir DIR   # DIR/fold<f>/<method>

Re-running the same command resumes from the newest checkpoint in DIR that restores;
the config must train the same thing (--allow_schedule_change lets the schedule
differ, e.g. more steps). Ctrl-C or SIGTERM saves the current step, then stops.
Failures are one line (docs/reliability.md): exit 2 for bad input (config, data,
a DIR another process trains), found before DIR is written; 1 for a run that
diverged (no non-finite checkpoint is saved) or a failed write; 130/143 when
interrupted.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxsr import entry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: configs/csr_dmri.py:quick "
    "(configs/compare_dmri.py and configs/mrsi.py train all their runs).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics.jsonl, run.json, eval/.")
_ALLOW_SCHEDULE_CHANGE = flags.DEFINE_bool(
    "allow_schedule_change", False, "Resume although train.num_steps, the learning-rate "
    "schedule or the checkpoint interval differ from the checkpoints' config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep library INFO logs off the progress bar
    logging.set_verbosity(logging.WARNING)
  entry.quiet_library_noise()
  config = entry.config_value(_CONFIG)
  from jaxsr.train import distributed  # after the flags: a bad command line fails without JAX

  code = entry.report_errors(lambda: distributed.initialize(config))
  if code:
    sys.exit(code)
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  from jaxsr import registry  # after the flags: a bad command line fails without loading it

  sys.exit(entry.report_errors(lambda: registry.train(
      config, _WORKDIR.value, allow_schedule_change=_ALLOW_SCHEDULE_CHANGE.value)))


if __name__ == "__main__":
  app.run(main, flags_parser=entry.parse_flags)
