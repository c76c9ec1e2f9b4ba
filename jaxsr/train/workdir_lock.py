"""One training process per run directory: an OS lock the kernel releases when its holder dies.

`WORKDIR/.lock` is locked with `fcntl.flock` (exclusive, non-blocking) for as
long as training runs, and holds a line on the holder (pid, host, start time,
command). A second `train.py` on the same directory stops at once with
`WorkdirBusy` naming the holder; a killed holder's lock is gone with it, so
there is no stale lock to remove by hand. Readers (`evaluate.py`, `jaxsr
upsample`) take no lock: they read finished checkpoints only.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys

from jaxsr.errors import WorkdirBusy
from jaxsr.files import write_errors

LOCK_NAME = ".lock"


def _holder_line(path: pathlib.Path) -> str:
  try:
    holder = json.loads(path.read_text() or "{}")
  except (OSError, ValueError):
    holder = {}
  if not holder:
    return "another process"
  return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
          f"({holder.get('command')})")


class WorkdirLock:
  """Context manager holding `WORKDIR/.lock`; raises WorkdirBusy if another process holds it."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_NAME
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    with write_errors(self.path):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      handle = open(self.path, "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.close()
      raise WorkdirBusy(f"{self.path.parent}: being trained by {_holder_line(self.path)}; "
                        "wait for it to finish or stop it (the lock goes with its process)"
                        ) from None
    with write_errors(self.path):
      handle.seek(0)
      handle.truncate()
      handle.write(json.dumps({
          "pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)[:300]}) + "\n")
      handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
