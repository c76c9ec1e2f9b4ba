"""Running the `jaxsr` command inside a test process."""

import contextlib
import io

from jaxsr import cli

# --max-memory for commands run inside a test worker: the budget covers the whole process,
# which holds every earlier test's compiled programs, so it is generous (a test about the
# budget sets its own).
BUDGET = "32G"


def run_cli(*args) -> tuple[int, str]:
  """`jaxsr ARGS` in this process: (exit code, what it printed to stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main([str(a) for a in args])
  return code, err.getvalue()
