"""A persistent cache of compiled XLA programs for the `jaxsr` command, shared across runs.

A `jaxsr upsample` spends most of a small input's time compiling the encoder and
decoder (and the memory plan's probes); the same grid compiled before is read
back from disk instead (JAX's persistent compilation cache, which writes each
entry under a temporary name and renames it, so commands running at once may
share it). The folder: $JAX_COMPILATION_CACHE_DIR if set (JAX's own setting, left
as it is), else $JAXSR_CACHE_DIR, else $XDG_CACHE_HOME/jaxsr/xla
(~/.cache/jaxsr/xla); JAXSR_CACHE_DIR=off turns it off. A folder that cannot be
written is one warning line, and the command runs without the cache. The cache
is trusted code (JAX's warning): keep it in a folder only you can write.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

OFF = ("off", "none", "0")


def default_folder() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "jaxsr" / "xla"


def enable(warn=lambda line: print(line, file=sys.stderr)) -> str | None:
  """Turns the cache on before the first compilation; returns its folder, or None (off)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]  # JAX reads it itself
  setting = os.environ.get("JAXSR_CACHE_DIR")
  if setting is not None and setting.strip().lower() in OFF:
    return None
  folder = pathlib.Path(setting) if setting else default_folder()
  try:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
      pass
  except OSError as error:
    warn(f"jaxsr: warning: compiled programs are not cached: {folder}: "
         f"{error.strerror or error} (set JAXSR_CACHE_DIR to a writable folder)")
    return None
  import jax

  jax.config.update("jax_compilation_cache_dir", str(folder))
  # Every program the command compiles is worth keeping: the smallest still take a second
  # to compile on a laptop, and reading one back takes milliseconds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return str(folder)
