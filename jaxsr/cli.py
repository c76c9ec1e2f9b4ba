"""The `jaxsr` command: super-resolution of your own NIfTI files with a trained model.

  jaxsr upsample --dwi in.nii.gz --voxel-size 1.25 --out out.nii.gz [--adapt 300] [--psf auto]
  jaxsr upsample --checkpoint RUN_DIR --dwi in.nii.gz --voxel-size 1.25 --out out.nii.gz
  jaxsr bids BIDS_DIR BIDS_DIR/derivatives/jaxsr participant [--participant-label 01] --scale 2
  jaxsr upsample-mrsi --checkpoint RUN_DIR --map naa.nii.gz --t1 t1.nii.gz --flair flair.nii.gz \
      --metabolite NAA --sharpness 0.03 --out naa_sr.nii.gz

Training and evaluation have their own entry points (train.py, evaluate.py).
Bad input (options, files, requests, an output folder that takes no file, a
checkpoint that does not restore) stops with one line naming the problem, exit
code 2, before any computation; a write that fails later is one line, exit code
1; Ctrl-C is one line, exit code 130. No partial output file is left either way
(docs/reliability.md). Progress bars are drawn only when stderr is a terminal.
Compiled programs are kept in a persistent cache across runs (`jaxsr.compile_cache`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from absl import logging as absl_logging

from jaxsr import __version__, compile_cache, registry
from jaxsr.errors import JaxsrError, exit_code, one_line


class _OneLineParser(argparse.ArgumentParser):
  """argparse with its errors as one line (`jaxsr upsample: error: ...`, exit 2) rather than
  the usage block first: the line names the option, and --help has the rest."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
  """The parser of every family's commands (`jaxsr.registry.family_clis`), and {name: handler}."""
  parser = _OneLineParser(
      prog="jaxsr", description="Arbitrary-scale super-resolution of MR images (JAX/Flax). "
      "Train models with train.py, score them with evaluate.py, and apply them to your own "
      "scans with the commands below.")
  parser.add_argument("--version", action="version", version=f"jaxsr {__version__}")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  handlers = {}
  for family_cli in registry.family_clis():
    handlers.update(family_cli.add_commands(commands))
  return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit code (0; 2 for bad input, 1 for a failed write, each with
  a one-line message)."""
  parser, handlers = build_parser()
  args = parser.parse_args(argv)
  compile_cache.enable()  # before the first compilation: a repeated command reads it back
  # Progress bars only on a terminal: in a log file their carriage returns are noise.
  args.quiet = getattr(args, "quiet", False) or not sys.stderr.isatty()
  absl_logging.set_verbosity(absl_logging.ERROR)  # e.g. orbax's notes on read-only restores
  try:
    message = handlers[args.command](args)
  except (JaxsrError, OSError) as error:
    print(f"jaxsr {args.command}: error: {one_line(error)}", file=sys.stderr)
    return exit_code(error)
  except KeyboardInterrupt:  # outputs are temporaries until complete: none is left half-written
    print(f"jaxsr {args.command}: interrupted; outputs not complete were not written",
          file=sys.stderr)
    return 130
  print(message)
  return 0


if __name__ == "__main__":
  sys.exit(main())
