"""Benchmarks, run as `python -m benchmarks.<name>`; results in docs/benchmarks.md and docs/inference.md."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform

import jax

from jaxsr.train.run_record import git_commit, package_versions


def cpu_name() -> str:
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    return next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def machine_report() -> str:
  """One line: CPU, cores, JAX devices, versions (torch when installed) and the git commit."""
  versions = package_versions()
  try:
    versions["torch"] = importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    pass
  listed = ", ".join(f"{k} {versions[k]}" for k in ("python", "jax", "jaxlib", "flax", "torch")
                     if k in versions)
  return (f"machine: {cpu_name()}, {os.cpu_count()} cores; JAX devices {jax.devices()}; "
          f"{listed}; commit {git_commit()}")
