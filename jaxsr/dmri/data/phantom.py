"""The embedded default dataset: diffusion MRI simulated from the MNI ICBM152 2009a template.

No download is needed: the T1 and the GM/WM probability maps (1 mm, 197 × 233 × 189)
ship inside the nilearn wheel, and the gradient directions (1 b0 + 64 directions at
b ≈ 1000 s/mm²) inside the dipy wheel. Each simulated subject is

  anatomy    the template warped by a smooth random deformation (~`deformation_mm`);
  T1         the warped template T1 with a random gain, gamma and smooth bias field,
             on its own grid (1 mm, or half the DWI voxel when that is coarser);
  DWI        a partial-volume mixture of WM, GM and CSF compartments,
               S(b, g) = Σ_t f_t · S0_t · exp(-b gᵀ D_t g),
             with WM fibres along the direction of least change of the WM map
             (smallest eigenvector of its structure tensor), anti-aliased down to
             `voxel_size_mm`, plus Rician noise of σ = mean WM b0 / snr.

Folders are written in the HCP layout (`data.nii.gz`, `bvals`, `bvecs`,
`nodif_brain_mask.nii.gz`, `T1w.nii.gz`, plus `wm_mask.nii.gz`), so the loader for
real HCP subjects (`jaxsr.dmri.data.subjects`) reads them unchanged. Affines are RAS+
voxel -> MNI mm; diffusivities are in mm²/s, b-values in s/mm².
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import pathlib
import shutil
import uuid

import dipy
import numpy as np
from tqdm import tqdm

from jaxsr import anatomy, nifti
from jaxsr.dmri.data import btable

DATASET_VERSION = 1
GRADIENT_DIR = os.path.join(os.path.dirname(dipy.__file__), "data", "files")
GRADIENT_FILE = "small_64D"  # .bval/.bvec: 1 b0 + 64 directions at b ≈ 1000 s/mm²

WM_B0 = 1000.0  # signal units of a pure-WM b0 voxel
GRID_MARGIN_VOXELS = 3  # DWI grid: brain bounding box plus this margin on every side
MAX_BUILD_WORKERS = 8  # processes of a build (each holds a subject and the template in memory)
PARALLEL_BUILD_BELOW_MM = 4.0  # finer grids are built by one process per CPU (docs/data.md)


@dataclasses.dataclass(frozen=True)
class Tissue:
  """A compartment: relative b0 signal and an axially symmetric tensor (mm²/s)."""
  s0: float
  parallel: float
  perpendicular: float


# b0 contrast WM : GM : CSF ≈ 1 : 1.3 : 3 follows from proton density and T2 at 3 T
# (WM T2 ≈ 70-80 ms, GM ≈ 90-110 ms, CSF > 1 s; Wansapura et al., JMRI 1999;
# Stanisz et al., MRM 2005) at an HCP-like TE ≈ 90 ms, with CSF damped by its long T1.
# Diffusivities: WM λ∥ ≈ 1.7e-3, λ⊥ ≈ 0.35e-3 and brain MD ≈ 0.8e-3 mm²/s (Pierpaoli
# et al., Radiology 1996); CSF is free water at 37 °C, 3.0e-3 mm²/s (Mills, J Phys Chem 1973).
WM = Tissue(s0=1.0, parallel=1.7e-3, perpendicular=0.35e-3)
GM = Tissue(s0=1.3, parallel=1.0e-3, perpendicular=0.7e-3)  # weakly anisotropic, MD 0.8e-3
CSF = Tissue(s0=3.0, parallel=3.0e-3, perpendicular=3.0e-3)


def tissue_tensors(structure: np.ndarray, wm_scale: float = 1.0, gm_scale: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
  """WM and GM diffusion tensors (N, 3, 3) in mm²/s from (N, 6) structure tensors.

  WM fibres run along the eigenvector of the smallest eigenvalue (along a tract the
  WM map does not change), GM's weak anisotropy along the largest (across the
  cortex, radially). Each tensor is blended toward its isotropic mean by a
  coherence in [0, 1], so that it is isotropic where the orientation is undefined.
  """
  from dipy.reconst import dti  # on use: it slows every command's start-up

  matrices = dti.from_lower_triangular(structure.astype(np.float64))
  evals, evecs = np.linalg.eigh(matrices)  # ascending: column 0 is the least-change direction
  evals = np.maximum(evals, 0.0)
  eps = 1e-4  # 1/mm²: gradients weaker than ~1 % per mm carry no orientation
  line = (evals[:, 1] - evals[:, 0]) / (evals[:, 1] + evals[:, 0] + eps)
  sheet = (evals[:, 2] - evals[:, 1]) / (evals[:, 2] + evals[:, 1] + eps)

  def tensors(tissue: Tissue, direction: np.ndarray, coherence: np.ndarray) -> np.ndarray:
    mean = (tissue.parallel + 2 * tissue.perpendicular) / 3
    outer = direction[:, :, None] * direction[:, None, :]
    anisotropic = tissue.perpendicular * np.eye(3) + (tissue.parallel - tissue.perpendicular) * outer
    c = coherence[:, None, None]
    return c * anisotropic + (1 - c) * mean * np.eye(3)

  return (wm_scale * tensors(WM, evecs[:, :, 0], line),
          gm_scale * tensors(GM, evecs[:, :, 2], sheet))


@dataclasses.dataclass(frozen=True)
class Phantom:
  """One simulated subject.

  Attributes:
    dwi: (X, Y, Z, V) float32 noisy signal (pure-WM b0 ≈ 1000).
    affine: (4, 4) DWI voxel -> world mm.
    mask: (X, Y, Z) bool brain mask (intracranial region).
    wm_mask: (X, Y, Z) bool, WM probability > 0.5.
    fractions: (X, Y, Z, 3) float32 WM, GM, CSF volume fractions (sum <= 1).
    noise_sigma: σ of the Rician noise, signal units.
    t1: (x, y, z) float32 T1-weighted image on its own grid; t1_affine its (4, 4) affine.
  """
  dwi: np.ndarray
  affine: np.ndarray
  mask: np.ndarray
  wm_mask: np.ndarray
  fractions: np.ndarray
  noise_sigma: float
  t1: np.ndarray
  t1_affine: np.ndarray


def simulate_subject(index: int, *, bvals: np.ndarray, bvecs: np.ndarray, voxel_size_mm: float,
                     snr: float, seed: int, deformation_mm: float) -> Phantom:
  """Simulates subject `index` (deterministic in seed and index).

  Args:
    index: subject number.
    bvals: (V,) s/mm²; bvecs: (V, 3) unit vectors (zero for b0).
    voxel_size_mm: isotropic DWI voxel edge.
    snr: mean WM b0 over the Rician noise σ.
    seed: dataset seed.
    deformation_mm: standard deviation of each displacement component.
  """
  template = anatomy.load_template()
  rng = np.random.default_rng([seed, index])
  low, high = template.brain_bounds()
  deformation = anatomy.SmoothField.random(rng, low, high, spacing_mm=20.0, num_components=3)
  bias = anatomy.SmoothField.random(rng, low, high, spacing_mm=50.0, num_components=1)
  gain, gamma = rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15)
  wm_scale, gm_scale, csf_scale = rng.uniform(0.9, 1.1, size=3)

  shape, affine = anatomy.grid(low, high, voxel_size_mm, GRID_MARGIN_VOXELS)
  displacement = deformation_mm * deformation.on_grid(anatomy.grid_axes(shape, affine))
  wm, gm, csf, brain = anatomy.warp([anatomy.prefiltered(n, float(voxel_size_mm))
                              for n in ("wm", "gm", "csf", "brain")],
                             template.affine, shape, affine, displacement)
  structure = np.stack(anatomy.warp(list(np.moveaxis(template.structure, -1, 0)),
                             template.structure_affine, shape, affine, displacement), axis=-1)
  fractions = np.stack([wm, gm, csf], axis=-1)
  fractions /= np.maximum(fractions.sum(-1, keepdims=True), 1.0)
  mask = brain > 0.5

  # Noise-free signal of the voxels holding any tissue, then Rician noise everywhere.
  inside = fractions.sum(-1) > 0
  wm_tensors, gm_tensors = tissue_tensors(structure[inside], wm_scale, gm_scale)
  bq = bvals[:, None, None] * bvecs[:, :, None] * bvecs[:, None, :]  # (V, 3, 3) b g gᵀ

  def attenuation(tensors):  # (N, V) exp(-b gᵀ D g)
    return np.exp(-np.einsum("vij,nij->nv", bq, tensors))

  f = fractions[inside].astype(np.float64)
  signal = WM_B0 * (f[:, :1] * WM.s0 * attenuation(wm_tensors)
                    + f[:, 1:2] * GM.s0 * attenuation(gm_tensors)
                    + f[:, 2:] * CSF.s0 * np.exp(-bvals[None] * CSF.parallel * csf_scale))
  clean = np.zeros(shape + (len(bvals),), np.float32)
  clean[inside] = signal
  wm_mask = wm > 0.5
  b0 = btable.b0_indices(bvals)
  noise_sigma = float(clean[wm_mask][:, b0].mean() / snr)
  noise = rng.standard_normal((2,) + clean.shape, dtype=np.float32) * noise_sigma
  dwi = np.hypot(clean + noise[0], noise[1])

  t1_voxel = max(1.0, voxel_size_mm / 2)
  t1_margin = int(np.ceil(GRID_MARGIN_VOXELS * voxel_size_mm / t1_voxel)) + 1  # covers the DWI
  t1_shape, t1_affine = anatomy.grid(low, high, t1_voxel, t1_margin)
  t1_axes = anatomy.grid_axes(t1_shape, t1_affine)
  (t1,) = anatomy.warp([anatomy.prefiltered("t1", t1_voxel)], template.affine, t1_shape, t1_affine,
                deformation_mm * deformation.on_grid(t1_axes))
  t1 = WM_B0 * gain * np.clip(t1, 0.0, None) ** gamma * np.exp(0.1 * bias.on_grid(t1_axes)[..., 0])
  return Phantom(dwi=dwi.astype(np.float32), affine=affine, mask=mask, wm_mask=wm_mask,
                 fractions=fractions.astype(np.float32), noise_sigma=noise_sigma,
                 t1=t1.astype(np.float32), t1_affine=t1_affine)


def gradient_table(num_directions: int, num_b0: int) -> tuple[np.ndarray, np.ndarray]:
  """bvals (V,) and bvecs (V, 3), V = num_b0 + num_directions, from dipy's small_64D.

  The directions are a well-spread subset (greedy farthest-point on the sphere,
  antipodes identified); the b0 volumes are interleaved evenly, as in HCP.
  """
  bvals, bvecs = btable.load_bvals_bvecs(
      os.path.join(GRADIENT_DIR, GRADIENT_FILE + ".bval"),
      os.path.join(GRADIENT_DIR, GRADIENT_FILE + ".bvec"), 1 + 64, GRADIENT_FILE)
  weighted = np.flatnonzero(bvals > btable.B0_THRESHOLD)
  if not 1 <= num_directions <= len(weighted) or num_b0 < 1:
    raise ValueError(f"need 1 <= num_directions <= {len(weighted)} and num_b0 >= 1, "
                     f"got {num_directions}, {num_b0}")
  chosen = [weighted[0]]
  while len(chosen) < num_directions:
    cosines = np.abs(bvecs[weighted] @ bvecs[chosen].T).max(axis=1)
    chosen.append(weighted[np.argmin(cosines)])
  num_volumes = num_b0 + num_directions
  is_b0 = np.zeros(num_volumes, bool)
  is_b0[np.linspace(0, num_volumes, num_b0, endpoint=False).astype(int)] = True
  out_bvals, out_bvecs = np.zeros(num_volumes), np.zeros((num_volumes, 3))
  out_bvals[~is_b0], out_bvecs[~is_b0] = bvals[chosen], bvecs[chosen]
  return out_bvals, out_bvecs


def write_subject(folder: pathlib.Path, phantom: Phantom, bvals: np.ndarray,
                  bvecs: np.ndarray) -> None:
  """Writes one subject folder in the HCP layout."""
  folder.mkdir(parents=True)
  # Integer-valued signal, as from a scanner (and it compresses 2-4 times better).
  nifti.save_volume(folder / "data.nii.gz", np.round(phantom.dwi), phantom.affine)
  nifti.save_volume(folder / "nodif_brain_mask.nii.gz", phantom.mask, phantom.affine)
  nifti.save_volume(folder / "wm_mask.nii.gz", phantom.wm_mask, phantom.affine)
  nifti.save_volume(folder / "T1w.nii.gz", np.round(phantom.t1).astype(np.int16), phantom.t1_affine)
  np.savetxt(folder / "bvals", bvals[None], fmt="%.4f")
  np.savetxt(folder / "bvecs", bvecs.T, fmt="%.8f")


def build_embedded_dataset(root: str | os.PathLike, *, num_subjects: int, voxel_size_mm: float,
                           num_directions: int, num_b0: int = 2, snr: float = 30.0,
                           seed: int = 0, deformation_mm: float = 3.0,
                           num_workers: int | None = None) -> list[pathlib.Path]:
  """Builds (or reuses) the embedded dataset: `root/sub-00`, `root/sub-01`, ... in the HCP layout.

  Deterministic in the arguments. `root/manifest.json` records them; when it matches,
  the existing folders are returned without rebuilding. A build goes into a temporary
  sibling folder that replaces `root` only once complete, so an interrupted build
  leaves no partial dataset. Subjects are simulated in `num_workers` processes (default:
  one per usable CPU below `PARALLEL_BUILD_BELOW_MM` voxels, else one; at most
  `MAX_BUILD_WORKERS`); the result does not depend on it.

  Returns:
    The subject folders, sorted.
  """
  root = pathlib.Path(root).expanduser().absolute()
  params = dict(version=DATASET_VERSION, num_subjects=int(num_subjects),
                voxel_size_mm=float(voxel_size_mm), num_directions=int(num_directions),
                num_b0=int(num_b0), snr=float(snr), seed=int(seed),
                deformation_mm=float(deformation_mm))
  names = [f"sub-{i:02d}" for i in range(num_subjects)]
  if _manifest(root) == params:
    return [root / n for n in names]
  if num_subjects < 1 or voxel_size_mm <= 0 or snr <= 0:
    raise ValueError(f"invalid embedded dataset parameters {params}")
  bvals, bvecs = gradient_table(num_directions, num_b0)
  root.parent.mkdir(parents=True, exist_ok=True)
  temp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
  subject_kwargs = dict(bvals=bvals, bvecs=bvecs, voxel_size_mm=voxel_size_mm, snr=snr,
                        seed=seed, deformation_mm=deformation_mm)
  jobs = [(temp / name, i, subject_kwargs) for i, name in enumerate(names)]
  progress = functools.partial(tqdm, total=len(jobs), desc=f"building the embedded data in {root}",
                               unit="subject", dynamic_ncols=True)
  if num_workers is None:  # on coarse grids a process's start-up outweighs its subjects
    num_workers = 1 if voxel_size_mm >= PARALLEL_BUILD_BELOW_MM else _usable_cpus()
  workers = min(len(jobs), num_workers, MAX_BUILD_WORKERS)
  try:
    if workers == 1:
      for _ in progress(map(_build_subject, jobs)):
        pass
    else:
      # Subjects are independent and seeded by their index, so the result does not depend
      # on the order. Fresh interpreters ("spawn"): the caller may hold JAX's threads, which
      # a forked child must not inherit.
      context = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for _ in progress(pool.map(_build_subject, jobs)):
          pass
    (temp / "manifest.json").write_text(json.dumps(params, indent=2) + "\n")
    if _manifest(root) == params:
      # Another process built the same data meanwhile (the processes of a distributed run
      # share the cache) and may be reading it: keep that build, never move it away.
      return [root / n for n in names]
    if root.exists():  # stale parameters: set the old build aside, then swap
      stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex}"
      os.replace(root, stale)
      shutil.rmtree(stale)
    try:
      os.replace(temp, root)
    except OSError:
      if _manifest(root) != params:  # not a concurrent identical build
        raise
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  return [root / n for n in names]


def _build_subject(job: tuple[pathlib.Path, int, dict]) -> None:
  """Simulates subject `index` and writes it to `folder` (one process of a parallel build)."""
  folder, index, kwargs = job
  bvals, bvecs = kwargs["bvals"], kwargs["bvecs"]
  write_subject(folder, simulate_subject(index, **kwargs), bvals, bvecs)


def _usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _manifest(root: pathlib.Path) -> dict | None:
  try:
    return json.loads((root / "manifest.json").read_text())
  except (OSError, ValueError):
    return None
