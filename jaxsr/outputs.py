"""Output files of the upsampling commands: NIfTI names and companions, checked before any work.

A command refuses (UpsampleError, one line) an output whose folder does not exist
or takes no file, that is one of its inputs, or that exists (without overwrite),
before it computes anything; outputs are then written under temporary names and
renamed at the end (`jaxsr.files`).
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Iterable

from jaxsr import files
from jaxsr.errors import UpsampleError, WriteError


def companion_path(out: str | os.PathLike, suffix: str) -> pathlib.Path:
  """`out` with its NIfTI extension replaced: sub.nii.gz -> sub.bval for suffix '.bval'."""
  out = pathlib.Path(out)
  stem = re.sub(r"\.nii(\.gz)?$", "", out.name)
  return out.with_name(stem + suffix)


def nifti_output(out: str | os.PathLike) -> pathlib.Path:
  """`out` as a path; UpsampleError unless it names a .nii or .nii.gz file."""
  out = pathlib.Path(out)
  if not re.search(r"\.nii(\.gz)?$", out.name):
    raise UpsampleError(f"{out}: the output must be a .nii or .nii.gz file")
  return out


def check_outputs(targets: Iterable[pathlib.Path], overwrite: bool,
                  inputs: Iterable[str | os.PathLike | None] = ()) -> None:
  """UpsampleError unless each target's folder exists and takes a file, the target is none of
  `inputs` (even with `overwrite`) and, without `overwrite`, does not exist yet.

  Temporaries a killed run left beside a target are removed (`files.remove_stale_temporaries`).
  """
  sources = {pathlib.Path(p).resolve() for p in inputs if p is not None}
  for target in targets:
    if not target.parent.is_dir():
      raise UpsampleError(f"{target}: folder {target.parent} does not exist")
    if target.resolve() in sources:
      raise UpsampleError(f"{target}: is one of the inputs; write the output elsewhere")
    if target.exists() and not overwrite:
      raise UpsampleError(f"{target}: already exists (use --overwrite to replace it)")
    try:
      files.check_writable_folder(target.parent, create=False)
    except WriteError as error:
      raise UpsampleError(f"{target}: cannot be written ({error})") from error
    files.remove_stale_temporaries(target)
