"""The persistent compilation cache of the `jaxsr` command (`jaxsr.compile_cache`)."""

import os
import subprocess
import sys

PROGRAM = """
import jax, jax.numpy as jnp
from jaxsr import compile_cache
print("folder", compile_cache.enable())
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
jax.jit(lambda x: jnp.sin(x) * 2 + x ** 3)(jnp.ones(7)).block_until_ready()
print("hits", hits.count("/jax/compilation_cache/cache_hits"))
"""


def run(env_update: dict) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}  # not the tests' own
  env.update(env_update)
  return subprocess.Popen([sys.executable, "-c", PROGRAM], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def output(process: subprocess.Popen) -> tuple[dict, str]:
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  return dict(line.split(" ", 1) for line in out.strip().splitlines()), err


def test_a_second_run_reads_the_compiled_program_back_and_runs_may_share_the_folder(tmp_path):
  folder = tmp_path / "cache"
  first, _ = output(run({"JAXSR_CACHE_DIR": str(folder)}))
  assert first == {"folder": str(folder), "hits": "0"} and any(folder.iterdir())
  # Two commands at once on the same folder: both read it, neither fails.
  both = [run({"JAXSR_CACHE_DIR": str(folder)}) for _ in range(2)]
  for process in both:
    again, _ = output(process)
    assert int(again["hits"]) >= 1  # the jitted function, and jnp.ones' own program


def test_the_cache_can_be_turned_off_and_an_unwritable_folder_is_one_warning(tmp_path):
  off, _ = output(run({"JAXSR_CACHE_DIR": "off"}))
  assert off == {"folder": "None", "hits": "0"}
  blocked = tmp_path / "file"
  blocked.write_text("not a folder\n")
  result, err = output(run({"JAXSR_CACHE_DIR": str(blocked / "xla")}))
  assert result == {"folder": "None", "hits": "0"}
  assert err.count("\n") == 1 and "compiled programs are not cached" in err
  default, _ = output(run({"XDG_CACHE_HOME": str(tmp_path / "home-cache")}))
  assert default["folder"] == str(tmp_path / "home-cache" / "jaxsr" / "xla")
