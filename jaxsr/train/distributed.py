"""Training on several processes with JAX's distributed runtime (`--config.distributed=True`).

Every process runs the same `train.py` command; `initialize` starts JAX's runtime
before anything else touches JAX. On a cluster JAX detects (SLURM, Open MPI,
Kubernetes, Cloud TPU) nothing more is needed; elsewhere each process is told in
its environment:

  JAX_COORDINATOR_ADDRESS  host:port where process 0 serves the coordinator (the same for all)
  JAX_NUM_PROCESSES        how many processes take part
  JAX_PROCESS_ID           this process's index, 0 … JAX_NUM_PROCESSES - 1

Process 0 writes the run's records, metrics and progress; all take part in every
checkpoint (orbax coordinates the write). Each process reads its rows of every
global batch (`jaxsr.train.batches`). A process that cannot reach the coordinator
within `distributed_timeout_s` stops with one line (exit code 2); one that loses
another is ended by JAX's runtime within that time (exit code 134, "another task
died") instead of waiting for ever. docs/scaling.md shows the launch commands.
"""

from __future__ import annotations

import os
import socket
import time

import jax
import numpy as np

from jaxsr.errors import JaxsrError

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedError(JaxsrError):
  """The distributed runtime could not start (settings, an unreachable coordinator)."""


def _environment_settings() -> dict:
  """num_processes and process_id from the environment, if given there (checked)."""
  given = {name: os.environ[name] for name in ENVIRONMENT[1:] if os.environ.get(name)}
  if not given:
    return {}
  if len(given) != 2 or not os.environ.get("JAX_COORDINATOR_ADDRESS"):
    raise DistributedError(f"set all of {', '.join(ENVIRONMENT)} (or none, on a cluster JAX "
                           f"detects); got {', '.join(sorted(given))}")
  try:
    num, index = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
  except ValueError:
    raise DistributedError(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                           f"{given}") from None
  if not 0 <= index < num:
    raise DistributedError(f"JAX_PROCESS_ID={index} is not in 0 … {num - 1}")
  return {"num_processes": num, "process_id": index}


def wait_for_coordinator(address: str, timeout: float) -> None:
  """DistributedError unless something accepts connections at `address` (host:port) within
  `timeout` seconds. JAX's runtime aborts the process when it cannot register with the
  coordinator; checked first, the common case (a wrong address, process 0 not started)
  is one line instead."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except (OSError, ValueError) as error:
      if time.monotonic() >= deadline:
        raise DistributedError(f"the distributed runtime did not start within {timeout:g} s: "
                               f"no coordinator at {address} ({error})") from None
      time.sleep(0.5)


def timeout_s(config) -> int:
  """How long processes wait for each other: `config.distributed_timeout_s`, 300 where unset."""
  return int(config.get("distributed_timeout_s", 300))


def initialize(config) -> None:
  """Starts JAX's distributed runtime if `config.distributed`; DistributedError on failure.

  Waits at most `config.distributed_timeout_s` seconds (default 300) for the
  coordinator and for every process to join; a process that stops answering is
  noticed after the same time, and JAX's runtime then ends the others (exit code
  134, "another task died").
  """
  if not config.get("distributed"):
    return
  timeout = timeout_s(config)
  settings = _environment_settings()
  if settings.get("process_id", 0) != 0:  # process 0 serves the coordinator itself
    wait_for_coordinator(os.environ["JAX_COORDINATOR_ADDRESS"], timeout)
  try:
    jax.distributed.initialize(initialization_timeout=timeout,
                               heartbeat_timeout_seconds=timeout, **settings)
  except (RuntimeError, ValueError) as error:
    text = " ".join(str(error).split())[:300]
    raise DistributedError(f"the distributed runtime did not start within {timeout} s "
                           f"({type(error).__name__}: {text})") from error
  _checkpoint_barriers_through_the_coordinator()


def _checkpoint_barriers_through_the_coordinator() -> None:
  """Makes orbax wait for the other processes at the coordinator's barriers (300 s), not in a
  collective: a collective's first use on CPU sets up gloo, which gives up after 30 s, and a
  process still importing or building its data on a loaded machine is later than that (seen
  in CI: "Gloo context initialization failed ... 30 s" in a checkpoint's sync)."""
  import orbax.checkpoint  # noqa: F401 (defines orbax's flags)
  from absl import flags
  # Unparsed flags (jaxsr used as a library): orbax keeps its default.
  if flags.FLAGS.is_parsed() and "experimental_orbax_use_distributed_barrier" in flags.FLAGS:
    flags.FLAGS["experimental_orbax_use_distributed_barrier"].value = True


def compile_and_wait_for_all(jitted, *args, timeout: float, name: str) -> None:
  """Compiles `jitted` for `args` here, then waits (at most `timeout` s) at the coordinator
  until every process has: the first run of a program with collectives sets up their
  connections (gloo on CPU), which gives up after 30 s ("Gloo context initialization
  failed"), and one process compiling or loading its data later than that is common on a
  loaded machine. Single-process runs return at once. `name` makes the barrier unique
  within the run (e.g. the step it precedes).
  """
  if jax.process_count() == 1:
    return
  jitted.lower(*args).compile()  # cached: the call that follows does not compile again
  from orbax.checkpoint import multihost
  # Naming the processes takes the coordinator's barrier even where orbax's flag is unset.
  multihost.sync_global_processes(f"jaxsr_{name}", timeout=int(timeout),
                                  processes=set(range(jax.process_count())))


def to_host(tree):
  """`jax.device_get` of a tree of replicated arrays, also where they span processes
  (PRNG key arrays are left as they are).

  An array on several processes' devices cannot be fetched whole; a replicated one
  (metrics, parameters) holds the same values on every device, so this process's
  copy is all of it.
  """
  def local(x):
    if not isinstance(x, jax.Array) or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return x  # PRNG keys stay where they are: they have no numpy form
    return np.asarray(x.addressable_data(0) if not x.is_fully_addressable else x)
  return jax.tree.map(local, tree)
