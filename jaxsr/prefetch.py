"""`ahead`: an iterator made in a background thread, a few items ahead of its consumer.

Used to overlap writing one super-resolved volume (gzip compression) with computing the next:
XLA and zlib both release the GIL, so the two proceed together. The standard library has
no such iterator (`concurrent.futures` maps functions, not a generator's state).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


def ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
  """The items of `items`, in order, made in a daemon thread at most `depth` items ahead.

  An exception raised while making an item is raised here, in the consumer, where that
  item would have come. When the consumer stops early (an error, Ctrl-C, `close()`), the
  thread stops after the item it is making.
  """
  results: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(entry) -> bool:
    """Queues `entry` unless the consumer has stopped; False once it has."""
    while not stop.is_set():
      try:
        results.put(entry, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put((item, None)):
          return
      put((_DONE, None))
    except BaseException as error:  # handed to the consumer, which raises it
      put((_DONE, error))

  thread = threading.Thread(target=produce, name="jaxsr-ahead", daemon=True)
  thread.start()
  try:
    while True:
      item, error = results.get()
      if error is not None:
        raise error
      if item is _DONE:
        return
      yield item
  finally:
    stop.set()
