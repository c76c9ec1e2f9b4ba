"""A 4D series as one job: batched volumes, one adaptation for the series, bad series, and the
compiled programs a second run reads back."""

import os
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import jaxsr
from jaxsr import nifti, prefetch
from jaxsr.dmri.app import adapt, adaptation
from jaxsr.dmri.app.checks import check_series_scaling, series_level
from jaxsr.dmri.inference.memory import plan_batch
from jaxsr.dmri.app.model import Upsampler
from tests.cli_helpers import BUDGET as CLI_BUDGET
from tests.cli_helpers import run_cli
from tests.test_upsample import BUDGET, grid_affine, head_phantom

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arssr(arssr_smoke_run):
  return Upsampler.from_checkpoint(arssr_smoke_run)


def series(num_volumes: int = 5, shape=(14, 12, 10)) -> np.ndarray:
  """(X, Y, Z, V): the head phantom, each volume a different weighting and noise."""
  b0 = head_phantom(shape)
  rng = np.random.default_rng(0)
  volumes = [b0 * (0.3 + 0.7 * rng.random()) + 40 * rng.random(b0.shape) * (b0 > 0)
             for _ in range(num_volumes)]
  return np.stack(volumes, axis=-1).astype(np.float32)


def test_a_batched_series_equals_volume_by_volume(arssr):
  data = series(5)
  affine = grid_affine(4.0, data.shape[:3])
  plan = plan_batch(arssr.model, arssr.params, arssr.in_channels, data.shape[:3], (28, 24, 20),
                    BUDGET, max_batch=3)
  assert plan.batch == 3  # 5 volumes: a batch of 3, then one of 2
  record = {}
  batched, _ = jaxsr.upsample(data, affine, arssr, scale=2, batch=3, max_memory=BUDGET,
                              record=record)
  one_by_one, _ = jaxsr.upsample(data, affine, arssr, scale=2, batch=1, max_memory=BUDGET)
  assert batched.shape == (28, 24, 20, 5)
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5 * data.max())
  for v in (0, 4):  # and each equals the volume upsampled alone
    alone, _ = jaxsr.upsample(data[..., v], affine, arssr, scale=2, max_memory=BUDGET,
                              psf=record["psf"]["per_axis"])
    np.testing.assert_allclose(batched[..., v], alone, rtol=1e-5, atol=1e-5 * data.max())


def test_a_series_is_adapted_once_on_its_b0s_and_every_volume_uses_it(arssr, monkeypatch):
  data = series(4, shape=(24, 24, 20))
  bvals = np.array([0, 1000, 5, 1000])
  affine = grid_affine(4.0, data.shape[:3])
  # A stand-in adaptation whose result is unmistakable: the parameters scaled by 1.1.
  calls = []
  adapted = arssr.with_params(jax_tree_scale(arssr.params, 1.1), "adapted")

  def fake_adapt(upsampler, scan, lr_shape, hr_shape, settings, *, mask=None, progress=False):
    calls.append(scan)
    result = types.SimpleNamespace(kept=True, record=lambda: {"kept": True})
    result.after_consistency = lambda check, original: result
    return adapted, result
  monkeypatch.setattr(adaptation, "adapt_upsampler", fake_adapt)
  # What is tested here is the series' plumbing; the last check has its own test (test_adapt).
  monkeypatch.setattr(adaptation, "consistency_check",
                      lambda *args, **kwargs: adapt.ConsistencyCheck(1.0, 1.0))
  record = {}
  out, _ = jaxsr.upsample(data, affine, arssr, scale=2, bvals=bvals, psf="cubic",
                          adapt=adapt.AdaptSettings(steps=5), max_memory=BUDGET, record=record)
  assert len(calls) == 1  # once for the series ...
  np.testing.assert_allclose(calls[0], data[..., [0, 2]].mean(-1), rtol=1e-6)  # ... on its b0s
  assert record["adapt"]["volumes"] == [0, 2]
  expected, _ = jaxsr.upsample(data, affine, adapted, scale=2, bvals=bvals, psf="cubic",
                               max_memory=BUDGET)
  np.testing.assert_allclose(out, expected, rtol=1e-6)  # every volume by the adapted model
  unadapted, _ = jaxsr.upsample(data, affine, arssr, scale=2, bvals=bvals, psf="cubic",
                                max_memory=BUDGET)
  for v in range(4):
    assert not np.allclose(out[..., v], unadapted[..., v])


def jax_tree_scale(tree, factor):
  import jax
  return jax.tree_util.tree_map(lambda x: x * factor, tree)


def test_a_mis_scaled_or_non_finite_volume_is_refused_naming_it(arssr_smoke_run, tmp_path):
  data = series(4)
  affine = grid_affine(4.0, data.shape[:3])
  mis_scaled = data.copy()
  mis_scaled[..., 2] *= 1000  # one volume in other units
  with pytest.raises(nifti.DataError, match="volume 2 is scaled unlike the others"):
    jaxsr.upsample(mis_scaled, affine, arssr_smoke_run, scale=2)
  blank = data.copy()
  blank[..., 1] = 0  # a blank volume is data, not a scaling error
  check_series_scaling([series_level(blank[..., v]) for v in range(4)], "x")
  for name, bad in (("scaled", mis_scaled), ("nan", data.copy())):
    if name == "nan":
      bad[3, 3, 3, 3] = np.nan
    path = tmp_path / f"{name}.nii.gz"
    nifti.save_volume(path, bad, affine)
    out = tmp_path / f"out_{name}.nii.gz"
    code, text = run_cli("upsample", "--checkpoint", arssr_smoke_run, "--input", path,
                         "--scale", "2", "--out", out, "--max-memory", CLI_BUDGET)
    assert code == 2 and text.count("\n") == 1, text
    assert ("volume 2" if name == "scaled" else "volume 3") in text
    assert not out.exists()


def test_ahead_keeps_order_raises_where_the_error_was_and_stops_when_abandoned():
  assert list(prefetch.ahead(range(7), depth=2)) == list(range(7))

  def failing():
    yield 1
    raise ValueError("made badly")
  items = prefetch.ahead(failing())
  assert next(items) == 1
  with pytest.raises(ValueError, match="made badly"):
    next(items)
  made = []
  stopped = threading.Event()

  def endless():
    try:
      for i in range(10**6):
        made.append(i)
        yield i
    finally:
      stopped.set()
  items = prefetch.ahead(endless())
  next(items)
  items.close()
  assert stopped.wait(30)
  assert len(made) <= 4
  # Abandoned with its last item already queued (the queue full): the thread still ends.
  before = {t for t in threading.enumerate() if t.name == "jaxsr-ahead"}
  items = prefetch.ahead(range(2))
  next(items)
  threading.Event().wait(0.5)  # the thread queues the last item, then waits to say it is done
  items.close()
  for _ in range(300):
    if not {t for t in threading.enumerate() if t.name == "jaxsr-ahead"} - before:
      break
    threading.Event().wait(0.1)
  assert not {t for t in threading.enumerate() if t.name == "jaxsr-ahead"} - before


def test_a_series_with_b_values_but_no_b0_runs_with_the_general_model(tmp_path):
  """b-values name no b0 (e.g. one shell cut from a series): the general model takes every
  volume by its own intensity, so the series runs; the report shows the first and last."""
  from jaxsr.dmri.app.upsample_files import shown_volumes

  data = series(3)
  out = jaxsr.upsample(data, grid_affine(4.0, data.shape[:3]), Upsampler.general(), scale=2,
                       bvals=np.full(3, 1000.0), max_memory=BUDGET)[0]
  assert out.shape == (28, 24, 20, 3) and np.all(np.isfinite(out))
  assert shown_volumes(3, np.full(3, 1000.0)) == [("volume 0", [0]), ("volume 2", [2])]
  assert shown_volumes(3, np.array([0.0, 1000, 1000]))[0] == ("mean b0 (volumes 0)", [0])


def test_nan_b_vectors_are_found_in_either_layout_and_comments_are_kept(tmp_path):
  from jaxsr.dmri.data import btable

  path = tmp_path / "x.bvec"
  path.write_text("# directions\nnan 1 0\nnan 0 1\nnan 0 0  # z\n")  # 3 x 3: x, y, z rows
  text, volumes = btable.finite_bvecs_text(path, 3)
  assert volumes == [0]  # the first column: volume 0 (3 x V, as load_bvals_bvecs reads it)
  assert text == "# directions\n0 1 0\n0 0 1\n0 0 0  # z\n"
  path.write_text("1 0 0\nNaN NaN NaN\n0 1 0\n0 0 1\n")  # 4 x 3: a volume per row
  assert btable.finite_bvecs_text(path, 4)[1] == [1]
  path.write_text("1 0 0\n0 1 0\n")
  assert btable.finite_bvecs_text(path, 2) is None


SECOND_RUN = """
import json, sys, jax
from jaxsr import compile_cache
compile_cache.enable()
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
from jaxsr.dmri.app import upsample_files
upsample_files.upsample_files(sys.argv[1], sys.argv[2], sys.argv[3], scale=2, overwrite=True,
                              progress=False)
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def test_a_second_run_reads_its_compiled_programs_from_the_cache(arssr_smoke_run, tmp_path):
  path = tmp_path / "in.nii.gz"
  nifti.save_volume(path, series(3), grid_affine(4.0, (14, 12, 10)))
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}  # not the tests' cache
  env.update(JAXSR_CACHE_DIR=str(tmp_path / "cache"))

  def run() -> dict:
    result = subprocess.run([sys.executable, "-c", SECOND_RUN, str(arssr_smoke_run), str(path),
                             str(tmp_path / "out.nii.gz")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    return json.loads(result.stdout.strip().splitlines()[-1])
  first, second = run(), run()
  assert first["misses"] > 0
  assert second["misses"] == 0 and second["hits"] >= first["misses"], (first, second)
