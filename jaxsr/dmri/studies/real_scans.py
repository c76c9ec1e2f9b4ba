"""Real-scan evaluation: real MR volumes degraded as acquisitions would, restored and scored.

The scans are real acquisitions that ship inside the dipy wheel (no download):

  S0_10slices     b0 EPI, 128 x 128 x 10 of 2 mm in-plane (slices far apart: in-plane only)
  aniso_vox       b0, 58 x 58 x 24 of 4 x 4 x 5 mm
  small_64D_b0    the b0 of small_64D, 10 x 10 x 10 of 2 mm
  small_64D_dwi   the mean of its 64 b = 1000 s/mm^2 volumes
  test_piesno     one noisy DWI slice, 96 x 96, under 14 diffusion weightings (2 b0, then
                  diffusion-weighted) stacked along z (validation only; in-plane only)
  small_101D_b0   the mean b0 of small_101D, 6 x 10 x 10 of 2.5 mm (validation only)
  t1_coronal      one coronal slice of a T1-weighted structural scan, 256 x 256 (validation
                  only; in-plane only)

and, as a second validation split ("synthetic"), volumes rendered like the training images
(`synthetic_0` ... : `SYNTHETIC_SHAPE` voxels by `jaxsr.dmri.data.randomised.render_patch`,
from generators seeded apart from any training run's, so images no run has trained on):
3D and contiguous where three of the real validation scans are one slice, or five.

The validation scans choose (checkpoint, back-projection, PSF handling,
adaptation); the test scans are scored once for the table
(`docs/results_real.md`). Each case degrades a scan by per-axis factors
(`DEGRADATIONS`: in-plane 2x and 3x, through-plane 2x, isotropic 2x, where the
scan has at least `MIN_LR_VOXELS` LR voxels per axis) with one PSF of
`jaxsr.dmri.degradation.psf` (block, Gaussian of FWHM one LR voxel, k-space truncation), the
LR grid's voxel centres at the centres of the HR blocks. Every method restores
the HR grid from the LR image alone; PSNR and SSIM are computed inside a brain
mask of the HR scan (dipy's median_otsu), with the HR scan's range in the mask
as the data range.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import dipy
import jax
import nibabel as nib
import numpy as np
from dipy.segment.mask import median_otsu
from tqdm import tqdm

from jaxsr import files, kspace, metrics
from jaxsr.dmri.app import adapt as adapt_lib
from jaxsr.dmri.data import btable
from jaxsr.dmri.degradation import acquisition
from jaxsr.dmri.degradation import psf as psf_lib
from jaxsr.dmri.app import upsample
from jaxsr.dmri.app.model import Upsampler, load_upsampler
from jaxsr.dmri.app.settings import DEFAULT_BACK_PROJECTION, DEFAULT_MAX_MEMORY, DEFAULT_PSF
from jaxsr.dmri.degradation.degrade import tricubic_upsample
from jaxsr.train.run_record import write_run_record

DIPY_FILES = pathlib.Path(dipy.__file__).resolve().parent / "data" / "files"
DEGRADATIONS = {  # per-axis factors (x, y in-plane; z through-plane)
    "in-plane 2x": (2.0, 2.0, 1.0),
    "in-plane 3x": (3.0, 3.0, 1.0),
    "through-plane 2x": (1.0, 1.0, 2.0),
    "isotropic 2x": (2.0, 2.0, 2.0),
    "in-plane 4x": (4.0, 4.0, 1.0),  # validation only (configs/real_scans.py)
}
MIN_LR_VOXELS = 4
TEST_SCANS = ("S0_10slices", "aniso_vox", "small_64D_b0", "small_64D_dwi")
VALIDATION_SCANS = ("test_piesno", "small_101D_b0", "t1_coronal")
SYNTHETIC_SCANS = tuple(f"synthetic_{i}" for i in range(4))
SYNTHETIC_SHAPE = (64, 64, 48)
# Entropy of the rendered volumes' generators (numpy SeedSequence([ENTROPY, i])): training
# draws from grain's per-record generators of the run's seed, never from these. The
# calibration volumes fit `--psf auto`'s thresholds (`jaxsr.dmri.studies.psf_calibration`);
# the synthetic ones are a validation split; neither is the other.
SYNTHETIC_ENTROPY = 20261208
CALIBRATION_ENTROPY = 20261209
CALIBRATION_SCANS = tuple(f"calibration_{i}" for i in range(8))
RENDERED_ENTROPY = {**{s: SYNTHETIC_ENTROPY for s in SYNTHETIC_SCANS},
                    **{s: CALIBRATION_ENTROPY for s in CALIBRATION_SCANS}}
SPLITS = {"test": TEST_SCANS, "validation": VALIDATION_SCANS, "synthetic": SYNTHETIC_SCANS}
# Scans whose slices are not neighbours in space (gaps between them, or one slice under
# several weightings): no through-plane cases.
NON_CONTIGUOUS_SLICES = ("S0_10slices", "test_piesno", "t1_coronal")


def _shell_mean(name: str, b0: bool) -> np.ndarray:
  image = nib.load(DIPY_FILES / f"{name}.nii.gz" if (DIPY_FILES / f"{name}.nii.gz").exists()
                   else DIPY_FILES / f"{name}.nii")
  data = np.asarray(image.dataobj, np.float32)
  bvals = np.loadtxt(DIPY_FILES / f"{name}.bval").ravel()
  select = bvals <= btable.B0_THRESHOLD if b0 else np.abs(bvals - 1000.0) <= 100.0
  return data[..., select].mean(axis=-1)


@functools.lru_cache(maxsize=None)
def load_scan(name: str) -> np.ndarray:
  """(X, Y, Z) float32 HR volume of a scan of this module's list (read-only)."""
  if name == "S0_10slices":
    volume = np.asarray(nib.load(DIPY_FILES / "S0_10slices.nii.gz").dataobj, np.float32)[..., 0]
  elif name in ("aniso_vox", "test_piesno"):
    volume = np.asarray(nib.load(DIPY_FILES / f"{name}.nii.gz").dataobj, np.float32)
  elif name in ("small_64D_b0", "small_64D_dwi", "small_101D_b0"):
    base, shell = name.rsplit("_", 1)
    volume = _shell_mean(base, b0=shell == "b0")
  elif name == "t1_coronal":
    volume = np.load(DIPY_FILES / "t1_coronal_slice.npy").astype(np.float32)[:, :, None]
  elif name in RENDERED_ENTROPY:
    volume = rendered(RENDERED_ENTROPY[name], int(name.rsplit("_", 1)[1]))
  else:
    raise ValueError(f"unknown scan {name!r}: use one of "
                     f"{TEST_SCANS + VALIDATION_SCANS + SYNTHETIC_SCANS + CALIBRATION_SCANS}")
  volume.flags.writeable = False
  return volume


def rendered(entropy: int, index: int) -> np.ndarray:
  """(SYNTHETIC_SHAPE) float32: a training-like image (round two's data: fine texture) from
  the generator SeedSequence([entropy, index]); the brightest tissue near 1, as scans are
  scaled."""
  from jaxsr.dmri.data import randomised  # on use: the template maps load slowly

  rng = np.random.default_rng([entropy, index])
  return randomised.render_patch(randomised.load_anatomy(), rng, SYNTHETIC_SHAPE,
                                 fine_texture=True)


def voxel_size(name: str) -> np.ndarray:
  """(3,) the HR scan's voxel size in mm, from its NIfTI header (1 mm where it has none:
  the T1 slice, the rendered volumes, which are isotropic)."""
  if name == "t1_coronal" or name in RENDERED_ENTROPY:
    return np.ones(3)
  base = name.rsplit("_", 1)[0] if name.startswith("small_") else name
  path = DIPY_FILES / f"{base}.nii.gz"
  return nib.affines.voxel_sizes(nib.load(path if path.exists() else path.with_suffix(""))
                                 .affine)[:3]


@functools.lru_cache(maxsize=None)
def brain_mask(name: str) -> np.ndarray:
  """(X, Y, Z) bool brain mask of the HR scan (median_otsu; scans under 32^2 in-plane: its
  2-voxel median filter would erase them, so radius 1)."""
  volume = load_scan(name)
  radius = 2 if min(volume.shape[:2]) >= 32 else 1
  _, mask = median_otsu(np.asarray(volume), median_radius=radius, numpass=1)
  return mask


@dataclasses.dataclass(frozen=True)
class Case:
  """One scored case: a scan, a degradation (name in DEGRADATIONS) and a PSF."""
  scan: str
  degradation: str
  psf: str

  @property
  def hr_shape(self) -> tuple[int, int, int]:
    return load_scan(self.scan).shape

  @property
  def lr_shape(self) -> tuple[int, int, int]:
    return tuple(max(1, int(round(n / f))) for n, f in zip(self.hr_shape,
                                                          DEGRADATIONS[self.degradation]))

  def lr(self) -> np.ndarray:
    """The LR acquisition: the HR scan degraded by the PSF (FWHM one LR voxel)."""
    return psf_lib.degrade(load_scan(self.scan), self.lr_shape, self.psf)

  def lr_affine(self) -> np.ndarray:
    """The LR grid's voxel -> mm (`lr_affine` of its factors and the scan's voxel size)."""
    factors = [h / l for h, l in zip(self.hr_shape, self.lr_shape)]
    return lr_affine(factors, voxel_size(self.scan))


def allowed(scan: str, degradation: str) -> bool:
  """Whether a scan can take a degradation: >= MIN_LR_VOXELS per degraded axis, contiguous slices."""
  factors = DEGRADATIONS[degradation]
  if factors[2] > 1 and scan in NON_CONTIGUOUS_SLICES:
    return False
  return all(n / f >= MIN_LR_VOXELS for n, f in zip(load_scan(scan).shape, factors) if f > 1)


def make_cases(scans: Sequence[str], degradations: Sequence[str], psfs: Sequence[str]
               ) -> list[Case]:
  return [Case(s, d, p) for s in scans for d in degradations for p in psfs if allowed(s, d)]


def lr_affine(factors: Sequence[float], hr_voxel_size: Sequence[float] = (1.0, 1.0, 1.0)
              ) -> np.ndarray:
  """LR voxel -> mm, the HR grid's voxel centres at (i * hr_voxel_size): LR centres at the
  centres of the HR blocks, LR voxels `factors` times the HR scan's."""
  size = np.asarray(hr_voxel_size, np.float64)
  affine = np.diag([*(np.asarray(factors) * size), 1.0])
  affine[:3, 3] = (np.asarray(factors) - 1.0) / 2.0 * size
  return affine


# (LR volume, case) -> (X, Y, Z) float32 on the HR grid, or (that, a note on what was done
# instead of what the method names, e.g. no adaptation on a scan too small for it, what was
# decided on the scan: the PSF, the adaptation)
Method = Callable[[np.ndarray, Case], np.ndarray | tuple[np.ndarray, str | None, dict]]


def classical_methods() -> dict[str, Method]:
  return {
      "linear": lambda lr, case: np.asarray(jax.image.resize(lr, case.hr_shape, "linear",
                                                             antialias=False)),
      "tricubic": lambda lr, case: np.asarray(tricubic_upsample(lr, case.hr_shape)),
      "zero_fill": lambda lr, case: kspace.zero_fill(lr, case.hr_shape),
  }


def model_method(upsampler: Upsampler, *,
                 back_projection: int = DEFAULT_BACK_PROJECTION,
                 psf: str | None = DEFAULT_PSF,
                 adapt: adapt_lib.AdaptSettings | None = None,
                 max_memory: int = DEFAULT_MAX_MEMORY) -> Method:
  """The model on the LR volume, as `jaxsr upsample` runs it (no mask; `psf` as the command's
  --psf: the default "auto" decides it from the scan, None is the training degradation)."""
  def predict(lr: np.ndarray, case: Case) -> tuple[np.ndarray, str | None, dict]:
    affine = case.lr_affine()

    def run(settings):
      record = {}
      out = upsample.upsample(lr, affine, upsampler, shape=case.hr_shape,
                              back_projection=back_projection, psf=psf, adapt=settings,
                              max_memory=max_memory, record=record)[0]
      return out, record
    try:
      out, record = run(adapt)
    except adapt_lib.AdaptError as error:  # as `jaxsr upsample` would refuse: the model alone
      out, record = run(None)
      return out, f"not adapted: {error}", _decisions(record)
    return out, None, _decisions(record)
  return predict


def _decisions(record: dict) -> dict:
  """What a case's record keeps of a run's decisions (the PSF, adaptation's losses)."""
  out = {}
  if "psf" in record:
    out["psf"] = record["psf"].get("per_axis")
  if "adapt" in record:
    out["adapt"] = {k: record["adapt"].get(k) for k in ("kept", "heldout_loss_before",
                                                        "heldout_loss_after", "best_step",
                                                        "steps_run", "transfer_check",
                                                        "consistency_check")}
  return out


def score_case(methods: dict[str, Method], case: Case) -> dict:
  """{method: {"psnr", "ssim", "seconds"}} of one case."""
  hr = np.asarray(load_scan(case.scan), np.float64)
  mask = brain_mask(case.scan)
  data_range = float(hr[mask].max() - hr[mask].min())
  lr = case.lr()
  scores = {}
  for name, method in methods.items():
    start = time.perf_counter()
    pred = method(lr, case)
    pred, note, decided = pred if isinstance(pred, tuple) else (pred, None, {})
    scores[name] = {"psnr": metrics.psnr(pred, hr, mask, data_range),
                    "ssim": metrics.ssim(pred, hr, mask, data_range),
                    "seconds": time.perf_counter() - start, "note": note, **decided}
  return scores


def run_cases(methods: dict[str, Method], cases: Sequence[Case], progress: bool = True
              ) -> list[dict]:
  rows = []
  for case in tqdm(cases, desc="cases", disable=not progress, dynamic_ncols=True):
    rows.append({**dataclasses.asdict(case), "lr_shape": case.lr_shape,
                 "scores": score_case(methods, case)})
  return rows


def markdown_table(rows: Sequence[dict], method_names: Sequence[str], reference: str = "tricubic"
                   ) -> str:
  """Rows: case; columns: PSNR / SSIM per method, best in bold, and each model's gain over
  `reference` in dB."""
  gains = [m for m in method_names if m not in classical_methods()]
  header = ["scan", "degradation", "PSF"] + [f"{m} PSNR / SSIM" for m in method_names]
  header += [f"{m} − {reference} (dB)" for m in gains]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    scores = row["scores"]
    best_psnr = max(scores[m]["psnr"] for m in method_names)
    best_ssim = max(scores[m]["ssim"] for m in method_names)
    cells = [row["scan"], row["degradation"], row["psf"]]
    for m in method_names:
      p, s = scores[m]["psnr"], scores[m]["ssim"]
      p_text = f"**{p:.2f}**" if p == best_psnr else f"{p:.2f}"
      s_text = f"**{s:.4f}**" if s == best_ssim else f"{s:.4f}"
      cells.append(f"{p_text} / {s_text}" + (" †" if scores[m].get("note") else ""))
    cells += [f"{scores[m]['psnr'] - scores[reference]['psnr']:+.2f}" for m in gains]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def summary(rows: Sequence[dict], method_names: Sequence[str], reference: str = "tricubic"
            ) -> str:
  """Per method: mean PSNR gain over `reference`, least gain, cases >= +1 dB and with higher SSIM."""
  lines = []
  for m in method_names:
    if m == reference:
      continue
    gains = np.array([r["scores"][m]["psnr"] - r["scores"][reference]["psnr"] for r in rows])
    ssim_up = sum(r["scores"][m]["ssim"] > r["scores"][reference]["ssim"] for r in rows)
    lines.append(f"- {m}: PSNR gain over {reference} mean {gains.mean():+.2f} dB, least "
                 f"{gains.min():+.2f} dB, >= +1 dB in {(gains >= 1).sum()}/{len(rows)} cases, "
                 f"higher SSIM in {ssim_up}/{len(rows)}")
  return "\n".join(lines) + "\n"


def _psf_mode(mode: str) -> str | None:
  """A config's PSF mode as `upsample`'s psf: "training" -> None (the training degradation)."""
  return None if mode == "training" else mode


def best_classical(scores: dict) -> tuple[str, float]:
  """(name, PSNR) of the best classical method of one case's scores."""
  name = max((m for m in classical_methods() if m in scores), key=lambda m: scores[m]["psnr"])
  return name, scores[name]["psnr"]


def target_summary(rows: Sequence[dict], method_names: Sequence[str],
                   reference: str = "tricubic") -> str:
  """Per model: its margin over the best classical method (least, cases >= +0.3 dB, cases
  with higher SSIM than every classical method) and its mean gain over `reference` per PSF."""
  lines = []
  for m in method_names:
    if m in classical_methods():
      continue
    margins = np.array([r["scores"][m]["psnr"] - best_classical(r["scores"])[1] for r in rows])
    ssim_all = sum(all(r["scores"][m]["ssim"] > r["scores"][c]["ssim"]
                       for c in classical_methods() if c in r["scores"]) for r in rows)
    per_psf = []
    for kind in sorted({r["psf"] for r in rows}):
      gains = [r["scores"][m]["psnr"] - r["scores"][reference]["psnr"] for r in rows
               if r["psf"] == kind]
      per_psf.append(f"{kind} {np.mean(gains):+.2f}")
    lines.append(f"- {m}: over the best classical method mean {margins.mean():+.2f} dB, least "
                 f"{margins.min():+.2f} dB, >= +0.3 dB in {(margins >= 0.3).sum()}/{len(rows)}, "
                 f"higher SSIM than each in {ssim_all}/{len(rows)}; mean gain over {reference} "
                 f"by PSF: {', '.join(per_psf)} dB")
  return "\n".join(lines) + "\n"


def adaptation_summary(rows: Sequence[dict], method_names: Sequence[str]) -> str:
  """Per adapted model: cases adapted, kept, and its gain over the unadapted model on them."""
  base = [m for m in method_names if m.startswith("model") and "adapt" not in m]
  lines = []
  for m in method_names:
    if "adapt" not in m or not base:
      continue
    adapted = [r for r in rows if "adapt" in r["scores"][m]]
    if not adapted:
      continue
    gains = np.array([r["scores"][m]["psnr"] - r["scores"][base[-1]]["psnr"] for r in adapted])
    kept = sum(r["scores"][m]["adapt"]["kept"] for r in adapted)
    lines.append(f"- {m} against {base[-1]}, over the {len(adapted)} adaptable cases: kept in "
                 f"{kept}, mean {gains.mean():+.2f} dB, least {gains.min():+.2f} dB, below it in "
                 f"{(gains < -0.005).sum()}")
  return ("\n" + "\n".join(lines) + "\n") if lines else ""


def report(rows: Sequence[dict], names: Sequence[str], title: str) -> str:
  """The markdown report of scored rows: the table, its notes and the summaries."""
  notes = sorted({s["note"] for r in rows for s in r["scores"].values() if s.get("note")})
  return (f"{title}; PSNR (dB) / SSIM inside the brain mask\n\n" + markdown_table(rows, names)
          + "".join(f"\n† {n}" for n in notes) + "\n\n" + summary(rows, names)
          + "\n" + target_summary(rows, names) + adaptation_summary(rows, names))


def evaluate(config, workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """Scores the config's cases; writes WORKDIR/eval/real_scans.{md,json} and returns the text.

  `config.split` picks the scans (`SPLITS`: "test", "validation", "synthetic");
  `config.checkpoint` the model ("" = the shipped general model) and
  `config.checkpoint_step` its step (0 = the latest), `config.psf_calibration` (a
  psf_calibration.json) `--psf auto`'s thresholds for it (default: the model's own, from an
  exported folder's manifest, else the defaults). `out` replaces WORKDIR/eval.
  `config.scores_from` (a real_scans_<split>.json written before, e.g. in
  docs/results_real_scores/) rebuilds the tables from its scores without scoring.
  """
  out_dir = pathlib.Path(out) if out else pathlib.Path(workdir) / "eval"
  files.check_can_create(out_dir)
  write_run_record(out_dir / f"real_scans_{config.split}_run.json", config)
  scans = SPLITS[config.split]
  upsampler = load_upsampler(config.checkpoint or None, config.get("checkpoint_step") or None)
  if config.get("psf_calibration"):  # thresholds fitted for a run's checkpoint
    thresholds = json.loads(pathlib.Path(config.psf_calibration).read_text())["thresholds"]
    upsampler = dataclasses.replace(upsampler,
                                    psf_thresholds=acquisition.check_thresholds(thresholds))
  methods = dict(classical_methods())
  psf_modes = tuple(config.get("psf_modes", (DEFAULT_PSF,)))
  for mode in psf_modes:
    for bp in config.back_projection:
      name = "model"
      name += f"_bp{bp}" if len(config.back_projection) > 1 else ""
      name += f"_psf_{mode}" if len(psf_modes) > 1 else ""
      methods[name] = model_method(upsampler, back_projection=bp, psf=_psf_mode(mode))
  for learning_rate in config.adapt_learning_rates if config.adapt_steps else ():
    name = f"model_adapt{config.adapt_steps}"
    if len(config.adapt_learning_rates) > 1:
      name += f"_lr{learning_rate:g}"
    settings = adapt_lib.AdaptSettings(steps=config.adapt_steps, learning_rate=learning_rate,
                                       seed=config.seed)
    methods[name] = model_method(upsampler, back_projection=config.back_projection[0],
                                 psf=_psf_mode(psf_modes[-1]), adapt=settings)
  model, step = upsampler.run_dir, upsampler.step
  if config.get("scores_from"):  # the tables again from a committed score record, no scoring
    saved = json.loads(pathlib.Path(config.scores_from).read_text())
    rows, names = saved["rows"], list(saved["rows"][0]["scores"])
    model, step = saved["model"], saved["step"]
  else:
    rows = run_cases(methods, make_cases(scans, config.degradations, config.psfs))
    names = list(methods)
  text = report(rows, names, f"Real scans ({config.split}), model {model} (step {step})")
  files.write_text(out_dir / f"real_scans_{config.split}.md", text)
  files.write_json(out_dir / f"real_scans_{config.split}.json",
                   {"model": model, "step": step, "rows": rows})
  return text
