"""SIGINT and SIGTERM during training: finish the step, save a checkpoint, then stop.

A cluster's preemption notice (SIGTERM) or Ctrl-C (SIGINT) sets a flag the
training loop reads after each step; it then saves a checkpoint of that step and
raises `jaxsr.errors.Interrupted` (exit 130 or 143), so re-running the same
command resumes where it stopped. A second signal while saving stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
  """Yields a list that receives the number of the first SIGINT/SIGTERM while inside.

  Handlers can only be set from the main thread; elsewhere the list stays empty
  and signals keep their handlers.
  """
  received: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return

  def handler(signum, frame):
    if received:  # asked twice: stop now
      raise KeyboardInterrupt
    received.append(signum)

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name
