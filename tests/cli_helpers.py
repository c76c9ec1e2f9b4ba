"""Running the `jaxsr` command inside a test process."""

import contextlib
import io

from jaxsr import cli


def run_cli(*args) -> tuple[int, str]:
  """`jaxsr ARGS` in this process: (exit code, what it printed to stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main([str(a) for a in args])
  return code, err.getvalue()
