"""What train.py and evaluate.py share: flags and failures reported as one line.

`parse_flags` is the absl `flags_parser`: an unknown or malformed flag, a config
file that is missing or fails to load, or an override of a key the config lacks
(`--config.nonexistent=1`) ends with `error: ...` on one line and exit code 2,
not a traceback. `report_errors` runs the command and turns jaxsr's errors
(`jaxsr.errors`) and failed writes into one line and their exit codes.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

from absl import flags

from jaxsr import errors


def _fail(text: str, code: int) -> None:
  print(f"error: {' '.join(text.split())}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with every parse or config error as one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    lines = [l for l in str(error).splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):  # a config file's get_config raised
      lines = [lines[0].split("Traceback")[0], lines[-1]]
    _fail(f"{' '.join(lines)} (see --help)", errors.EXIT_BAD_INPUT)
  except Exception as error:  # config_flags: the config file or an override  # noqa: BLE001
    cause = error
    while cause.__context__ is not None and not str(cause):
      cause = cause.__context__
    _fail(f"--config: {type(error).__name__}: {cause}".replace('"\'', "'").replace('\'"', "'"),
          errors.EXIT_BAD_INPUT)
  return []  # not reached


def config_value(config_flag) -> object:
  """The config a `DEFINE_config_file` flag holds; a file that failed to load is one line, exit 2
  (config_flags defers that error to the first use)."""
  try:
    config = config_flag.value
    config.keys()  # a config that failed to load is a proxy that raises when first used
    return config
  except Exception as error:  # noqa: BLE001
    _fail(f"--config: {error}", errors.EXIT_BAD_INPUT)
  return None  # not reached


class _LibraryNoise(logging.Filter):
  """Drops the checkpoint library's log records: its failures reach the user as jaxsr's one-line
  errors (a failed save: `WriteError`; an unreadable checkpoint: `CheckpointError`), and its
  asynchronous writers log each failed array, with a traceback, hundreds of lines in all."""

  SOURCES = ("/orbax/", "/asyncio/")

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(s in record.pathname for s in self.SOURCES)


def _quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook without the asynchronous writers' leftovers of a failed save."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
    return
  if "coroutine" in repr(unraisable.object) or "orbax" in repr(unraisable.object):
    return
  sys.__unraisablehook__(unraisable)


def quiet_library_noise() -> None:
  """Installs `_LibraryNoise` on every log handler and `_quiet_unraisable` (entry points only)."""
  noise = _LibraryNoise()
  for logger in (logging.getLogger(), logging.getLogger("absl")):
    logger.addFilter(noise)
    for handler in logger.handlers:
      handler.addFilter(noise)
  sys.unraisablehook = _quiet_unraisable


def report_errors(command: Callable[[], object]) -> int:
  """Runs `command`; returns 0, or the exit code of the jaxsr error or failed write it raised
  after printing it as one line."""
  try:
    command()
  except (errors.JaxsrError, OSError) as error:
    print(f"error: {errors.one_line(error)}", file=sys.stderr)
    return errors.exit_code(error)
  return 0
