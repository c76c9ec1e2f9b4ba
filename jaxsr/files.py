"""Writing results safely: whole files or none, valid JSON, write failures as one line.

Every file jaxsr writes for a user (tables, JSON, figures, NIfTI outputs, run
records) is written under a hidden temporary name in the target's folder and
renamed when complete (`os.replace` is atomic within a folder), so a failure
(full disk, quota, a killed process) leaves the previous file or none, never a
partial one. Temporary names end with the target's name (its extension picks
the format) and carry the writer's process id, so a later writer removes those
left by a process that no longer runs (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import uuid
from typing import Any, Callable, Iterator

from jaxsr.errors import WriteError, one_line, process_alive

_TEMP = re.compile(r"^\.tmp-(?P<pid>\d+)-[0-9a-f]{8}-(?P<name>.+)$")


def temporary_path(path: str | os.PathLike) -> pathlib.Path:
  """A hidden, unique name beside `path`, owned by this process: .tmp-PID-XXXXXXXX-NAME."""
  path = pathlib.Path(path).absolute()
  return path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
  """Removes temporaries of `path` left by processes that no longer run; returns them."""
  path = pathlib.Path(path).absolute()
  removed = []
  if not path.parent.is_dir():
    return removed
  for candidate in path.parent.iterdir():
    match = _TEMP.match(candidate.name)
    if match and match["name"] == path.name and not process_alive(int(match["pid"])):
      with contextlib.suppress(OSError):
        candidate.unlink()
        removed.append(candidate)
  return removed


@contextlib.contextmanager
def write_errors(what: str | os.PathLike) -> Iterator[None]:
  """Turns an OSError inside into a WriteError naming `what` (the file the user asked for)."""
  try:
    yield
  except WriteError:
    raise
  except OSError as error:
    reason = error.strerror or one_line(error)
    raise WriteError(f"{what}: could not write ({reason})") from error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path to write; renamed to `path` if the block succeeds, else removed.

  Failures to write are WriteErrors naming `path` (not the temporary).
  """
  path = pathlib.Path(path)
  remove_stale_temporaries(path)
  temp = temporary_path(path)
  try:
    with write_errors(path):
      yield temp
      os.replace(temp, path)
  finally:
    if temp.exists():
      with contextlib.suppress(OSError):
        temp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` whole or not at all."""
  with atomic_path(path) as temp:
    temp.write_text(text)


def finite_or_none(value: Any) -> Any:
  """`value` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(v) for v in value]
  if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / jax scalars
    return finite_or_none(value.item())
  return value


def json_text(value: Any, **kwargs) -> str:
  """Strict JSON of `value`: non-finite floats become null."""
  return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value: Any, **kwargs) -> None:
  """Writes `value` as strict JSON (indented, newline-terminated) whole or not at all."""
  write_text(path, json_text(value, indent=2, **kwargs) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[pathlib.Path], None]) -> None:
  """Calls `writer(temporary path)` and renames its file to `path`; whole or not at all."""
  with atomic_path(path) as temp:
    writer(temp)


def check_writable_folder(folder: str | os.PathLike, *, create: bool = True) -> pathlib.Path:
  """`folder` (created if `create`), checked by writing and removing a probe file.

  Raises:
    WriteError: the folder cannot be created or written (read-only, no space, permissions).
  """
  folder = pathlib.Path(folder)
  with write_errors(folder):
    if create:
      folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
      raise WriteError(f"{folder}: folder does not exist")
    probe = temporary_path(folder / "write-probe")
    try:
      with probe.open("wb") as f:
        f.write(b"\0" * 4096)  # a little data: a full disk fails here, not only on rename
    finally:
      if probe.exists():
        probe.unlink()
  return folder


def check_can_create(folder: str | os.PathLike) -> None:
  """WriteError unless `folder` exists writable, or its nearest existing ancestor is (so it can
  be created); nothing is left behind. Used before long work that writes `folder` later."""
  folder = pathlib.Path(folder).absolute()
  existing = folder
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise WriteError(f"{folder}: {existing} is not a folder")
  try:
    check_writable_folder(existing, create=False)
  except WriteError as error:
    raise WriteError(f"{folder}: cannot be created or written ({error})") from error


def publish_together(temps: dict[str, pathlib.Path], targets: dict[str, pathlib.Path],
                     overwrite: bool) -> None:
  """Renames each finished temporary onto its target, all of one run's outputs together.

  Without `overwrite`, every target is first claimed by creating it exclusively (O_EXCL):
  if another run made one of them since the check before computing, this run's claims are
  removed and a WriteError names it, so no run's output silently replaces another's and no
  output set mixes two runs. The renames then replace only this run's own empty claims; if
  one fails (or the run is interrupted), the claims and the outputs already renamed are
  removed again, so a set is published whole or not at all. (With `overwrite` the earlier
  files are replaced as they go and cannot be restored.)
  """
  targets = {name: pathlib.Path(path) for name, path in targets.items()}
  claimed = []
  try:
    if not overwrite:
      for path in targets.values():
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        claimed.append(path)
    for name, path in targets.items():
      with write_errors(path):
        os.replace(temps[name], path)
  except BaseException as error:
    for path in claimed:  # this run's claims and outputs: nothing of the set stays
      path.unlink(missing_ok=True)
    if isinstance(error, FileExistsError):
      raise WriteError(f"{error.filename}: appeared while this run was computing (another run "
                       "writing the same output?); nothing of this run was written (use "
                       "--overwrite to replace it)") from error
    if isinstance(error, OSError) and not isinstance(error, WriteError):
      raise WriteError(f"{error.filename}: could not write ({error.strerror or error})") from error
    raise
