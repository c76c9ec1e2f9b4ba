"""Shared fixtures: smoke-trained runs (embedded data, tiny models) reused across test modules."""

import atexit
import functools
import os
import pathlib
import shutil
import tempfile

# The tests' tiny models compile for far longer than they run, and many tests (and the
# train.py / evaluate.py processes they start, which inherit the environment) compile the
# same programs: one persistent XLA compilation cache per test session serves them all
# (docs/benchmarks.md, *The test suite*). Set here, in the process that starts the test
# workers, so that they share it too.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jaxsr-tests-xla-")
  atexit.register(functools.partial(shutil.rmtree, _cache, ignore_errors=True))
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# For the same reason, XLA:CPU's code generator optimises less and emits fusions the older,
# simpler way (together, less than half the compile time of a small train step); results
# agree within the tests' tolerances. Benchmarks and users' runs keep the defaults (faster
# programs, slower to compile).
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import pytest

from configs import arssr, csr_dmri
from jaxsr import registry


def pytest_collection_modifyitems(items):
  """Slow tests first (stable otherwise): the workers take whole files (--dist loadfile), so
  the long ones start early and the short ones fill the end, and both finish together."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> pathlib.Path:
  """The embedded smoke data set, built once per test session."""
  return tmp_path_factory.mktemp("smoke_cache")


def _train_smoke(config_module, workdir: pathlib.Path, cache: pathlib.Path, **overrides):
  config = config_module.get_config("smoke")
  config.data.cache_dir = str(cache)
  config.update_from_flattened_dict(overrides)
  registry.train(config, workdir)
  return workdir


@pytest.fixture(scope="session")
def arssr_smoke_run(tmp_path_factory, smoke_cache) -> pathlib.Path:
  """A run directory of configs/arssr.py:smoke (DWI only), trained its 20 steps."""
  return _train_smoke(arssr, tmp_path_factory.mktemp("arssr_smoke"), smoke_cache)


@pytest.fixture(scope="session")
def csr_smoke_run(tmp_path_factory, smoke_cache) -> pathlib.Path:
  """A run directory of configs/csr_dmri.py:smoke (DWI + T1), trained 2 steps."""
  return _train_smoke(csr_dmri, tmp_path_factory.mktemp("csr_smoke"), smoke_cache,
                      **{"train.num_steps": 2})
