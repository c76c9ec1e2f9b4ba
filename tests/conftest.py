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
# (on 2 cores: 10 min 45 s for the suite instead of 12 min 30 s). Set here, in the process
# that starts the test workers, so that they share it too.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jaxsr-tests-xla-")
  atexit.register(functools.partial(shutil.rmtree, _cache, ignore_errors=True))
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# For the same reason, XLA:CPU's code generator optimises less (about a fifth less time on
# compile-bound tests); results agree within the tests' tolerances. Benchmarks and users'
# runs keep the default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import pytest

from configs import arssr, csr_dmri
from jaxsr import tasks


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> pathlib.Path:
  """The embedded smoke data set, built once per test session."""
  return tmp_path_factory.mktemp("smoke_cache")


def _train_smoke(config_module, workdir: pathlib.Path, cache: pathlib.Path, **overrides):
  config = config_module.get_config("smoke")
  config.data.cache_dir = str(cache)
  config.update_from_flattened_dict(overrides)
  tasks.train(config, workdir)
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
