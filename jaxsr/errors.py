"""The errors jaxsr's commands report as one line, and their exit codes.

Every failure a user can cause or meet (bad input, a busy or unusable run
directory, a diverged run, a full disk, an interruption) is raised as a
`JaxsrError` whose message is one line naming the file, key or step at fault;
`train.py`, `evaluate.py` and `jaxsr` print it and exit with its `exit_code`:

  2    bad input or a refused request, found before any long work
       (config, data, checkpoint, output location, a workdir another process trains)
  1    a failure during the work (divergence, a write that failed); nothing partial is left
  130  interrupted by SIGINT, 143 by SIGTERM, after saving what resumes the run

docs/reliability.md lists the faults tested and their outcomes.
"""

from __future__ import annotations

import errno
import os

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class JaxsrError(Exception):
  """A failure reported as one line (`one_line`) with `exit_code`."""
  exit_code = EXIT_BAD_INPUT


class ConfigError(JaxsrError, ValueError):
  """A config key with a value the run cannot use (names the key)."""


class WorkdirBusy(JaxsrError):
  """Another live process holds the run directory's lock (names the holder)."""


class TrainingDiverged(JaxsrError):
  """Non-finite loss, gradients or parameters: training stopped, no such checkpoint saved."""
  exit_code = EXIT_FAILED


class UpsampleError(JaxsrError, ValueError):
  """A request that cannot be carried out (grid, size limit, output paths, options)."""


class WriteError(JaxsrError, OSError):
  """A file or folder that could not be written (names it and the reason)."""
  exit_code = EXIT_FAILED


class Interrupted(JaxsrError):
  """SIGINT or SIGTERM: the run saved a checkpoint to resume from and stopped."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + int(signum)


def one_line(error: BaseException) -> str:
  """The error's message on one line (an OSError also names its file and reason)."""
  if isinstance(error, OSError) and not isinstance(error, JaxsrError):
    reason = error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error)
    text = f"{error.filename}: {reason}" if error.filename else str(error)
  else:
    text = str(error)
  return " ".join(text.split())


def exit_code(error: BaseException) -> int:
  """The documented exit code of `error` (an OSError outside a JaxsrError: a failed write)."""
  if isinstance(error, JaxsrError):
    return error.exit_code
  return EXIT_FAILED


def process_alive(pid: int) -> bool:
  """Whether a process with this id exists on this machine."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True
