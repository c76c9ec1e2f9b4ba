"""The embedded MRSI dataset: metabolite maps of glioma patients simulated from the MNI template.

No MRSI data set ships in any package, so each "patient" is built from the real
anatomy of the MNI ICBM152 2009a template in the nilearn wheel (the maps of
`jaxsr.dmri.data.phantom`), warped by a smooth random deformation:

  slices     11–18 axial slices, 3.4 mm thick, of a 64 × 64 grid at 3.4 mm
             (217.6 mm field of view), as the 7 T ¹H-MRSI of the paper;
  maps       7 metabolites (tCho, tCr, NAA, Gly, Gln, Glu, Ins) in mM: the
             partial-volume mixture of GM and WM concentrations from the MRS
             literature (`CONCENTRATIONS`; CSF holds none), changed inside a
             glioma-like metabolic lesion (`LESION`: tumour with Cho and Gly up
             and NAA down, an optional necrotic core, an oedema), times a smooth
             field variation (±~10 %) and, for the metabolites of
             `INDEPENDENT_VARIATION`, a finer variation of their own, plus
             Gaussian noise of a per-metabolite SNR (three times the noise in the
             low-SNR patches that the quality filter rejects);
  T1, FLAIR  the warped template T1 (lesion hypointense) and a FLAIR made from
             the tissue maps (CSF dark, lesion and oedema bright), each with its
             own blur and noise, on the same 64 × 64 grid, scaled to [0, 1];
  quality    the voxels whose spectra a quality filter would keep: inside the
             brain, away from the skull (`SKULL_MARGIN_MM`), not mostly CSF, and
             not in randomly placed low-SNR patches (`LOW_SNR_FRACTION`).

The anatomy must not give the answer away: the lesion seen on T1/FLAIR and the
metabolic lesion share a centre region but not their extent (the metabolic one
is shifted and scaled by a random margin, `METABOLIC_MARGIN`, with an edge of its
own, as metabolic abnormality in glioma extends beyond or falls short of the
FLAIR hyperintensity), and some metabolites vary where the anatomy does not.

Patients are deterministic in (seed, index). `cross_validation_split` gives the
paper's 5 folds of 9 training, 3 validation and 3 test patients.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import uuid

import nibabel as nib
import nibabel.affines
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from jaxsr import anatomy

DATASET_VERSION = 2  # 2: metabolic lesion apart from the anatomical one, own T1/FLAIR noise
METABOLITES = ("tCho", "tCr", "NAA", "Gly", "Gln", "Glu", "Ins")
MAP_SIZE = 64  # voxels per in-plane axis
VOXEL_MM = 3.4
SKULL_MARGIN_MM = 5.0  # spectra closer than this to the brain's edge are rejected (lipids)
CSF_LIMIT = 0.7  # voxels with a larger CSF fraction are rejected (too little signal)
LOW_SNR_FRACTION = 0.05  # of the remaining voxels, rejected in random smooth patches

# Concentrations in mM (GM, WM), rounded from Pouwels & Frahm, MRM 39:53 (1998), regional
# values at 2 T, and the ranges collected by Govindaraju et al., NMR Biomed 13:129 (2000);
# glycine from Prescot et al., MRM 55:681 (2006). CSF holds none of them.
CONCENTRATIONS = {
    "tCho": (1.0, 1.6),  # GPC + PCh; higher in WM
    "tCr": (8.0, 5.7),  # Cr + PCr
    "NAA": (8.9, 7.8),  # NAA (+ NAAG in WM)
    "Gly": (0.6, 0.4),
    "Gln": (4.3, 2.6),
    "Glu": (9.5, 6.0),
    "Ins": (5.6, 4.3),  # myo-inositol
}
# Multipliers of the local concentration in (tumour, necrotic core, oedema): high-grade
# glioma raises choline (membrane turnover) and glycine, lowers NAA (neuronal loss) and
# creatine; necrosis holds little of any; oedema dilutes mildly (Horská & Barker,
# Neuroimaging Clin N Am 20:293 (2010); Maudsley et al., NMR Biomed 27:1091 (2014) for Gly;
# Ganji et al., MRM 2017 for Gly/Gln in glioma).
LESION = {
    "tCho": (2.5, 0.4, 1.1),
    "tCr": (0.7, 0.3, 0.9),
    "NAA": (0.25, 0.1, 0.8),
    "Gly": (3.5, 0.5, 1.2),
    "Gln": (1.6, 0.4, 1.1),
    "Glu": (0.7, 0.3, 0.9),
    "Ins": (1.3, 0.4, 1.2),
}
# SNR of each map (mean WM concentration over the noise σ): the singlets NAA, tCr and
# tCho are quantified best, coupled and low-concentration metabolites worst.
SNR = {"tCho": 15.0, "tCr": 20.0, "NAA": 20.0, "Gly": 5.0, "Gln": 6.0, "Glu": 12.0, "Ins": 10.0}
# Amplitude (sd of the log concentration) of a variation of each listed metabolite's own,
# on a 15 mm scale, that neither the anatomy nor the other maps show.
INDEPENDENT_VARIATION = {"Gly": 0.25, "Gln": 0.2, "Ins": 0.2, "Glu": 0.1}
# The metabolic lesion against the anatomical one: centre shifted by N(0, sd) mm per axis,
# radii scaled by U(low, high) per axis.
METABOLIC_MARGIN = {"shift_sd_mm": 4.0, "scale": (0.7, 1.4)}
# T1 and FLAIR: Gaussian blur sd in voxels U(low, high) and noise sd over the 99.5th
# percentile U(low, high), drawn per image.
ANATOMY_BLUR_VOXELS = (0.3, 1.0)
ANATOMY_NOISE = (0.01, 0.04)
LOW_SNR_NOISE_FACTOR = 3.0  # noise in the rejected low-SNR patches, times the map's own
# FLAIR intensities (WM, GM, CSF, tumour, necrosis, oedema) on a [0, 1] scale.
FLAIR = {"wm": 0.55, "gm": 0.7, "csf": 0.08, "tumour": 1.0, "necrosis": 0.45, "oedema": 0.95}


@dataclasses.dataclass(frozen=True)
class Patient:
  """One simulated patient: S axial slices of 64 × 64 voxels (3.4 mm).

  Attributes:
    name: "p00", "p01", ...
    maps: (S, M, 64, 64) float32 metabolite concentrations in mM, M = len(METABOLITES).
    t1, flair: (S, 64, 64) float32 in [0, 1].
    quality: (S, 64, 64) bool: voxels with valid ground truth (the quality filter).
    brain: (S, 64, 64) bool brain mask.
    lesion: (S, 64, 64) uint8 lesion seen on T1/FLAIR: 0 none, 1 oedema, 2 tumour,
      3 necrotic core.
    metabolic_lesion: (S, 64, 64) uint8, the same labels for the lesion the maps show.
    affine: (4, 4) voxel (x, y, slice) -> world mm of the slice stack.
  """
  name: str
  maps: np.ndarray
  t1: np.ndarray
  flair: np.ndarray
  quality: np.ndarray
  brain: np.ndarray
  lesion: np.ndarray
  metabolic_lesion: np.ndarray
  affine: np.ndarray


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
  """A smooth step from 0 (x << 0) to 1 (x >> 0) over about `width`."""
  return 0.5 * (1.0 + np.tanh(x / width))


@dataclasses.dataclass(frozen=True)
class LesionShape:
  """An ellipsoid with an irregular edge: centre and radii in world mm, edge field."""
  centre: np.ndarray  # (3,)
  radius: np.ndarray  # (3,)
  edge: anatomy.SmoothField
  necrotic: bool

  @classmethod
  def random(cls, rng: np.random.Generator, centre: np.ndarray, radius: np.ndarray,
             necrotic: bool) -> "LesionShape":
    edge = anatomy.SmoothField.random(rng, centre - 2 * radius.max(), centre + 2 * radius.max(),
                                        spacing_mm=8.0, num_components=1)
    return cls(centre, radius, edge, necrotic)

  def weights(self, axes, brain: np.ndarray) -> dict[str, np.ndarray]:
    """Soft (X, Y, Z) weights of tumour, necrosis (inner 45 %) and oedema (to 1.7 radii)."""
    points = np.meshgrid(*axes, indexing="ij")
    distance = np.sqrt(sum(((p - c) / r) ** 2
                           for p, c, r in zip(points, self.centre, self.radius)))
    distance = distance * (1.0 + 0.15 * self.edge.on_grid(tuple(axes))[..., 0])
    width = 0.08
    inside = _soft_step(1.0 - distance, width)
    necrosis = _soft_step(0.45 - distance, width) if self.necrotic else np.zeros_like(inside)
    oedema = _soft_step(1.7 - distance, width) - inside
    brain_f = brain.astype(np.float32)
    return {"tumour": (inside - necrosis) * brain_f, "necrosis": necrosis * brain_f,
            "oedema": oedema * brain_f}


def random_lesions(rng: np.random.Generator, axes, brain: np.ndarray, wm: np.ndarray,
                   slices: np.ndarray) -> tuple[LesionShape, LesionShape]:
  """(anatomical, metabolic) shapes of one random glioma-like lesion.

  The anatomical lesion is an ellipsoid of 10–25 mm mean radius centred on a
  random white-matter voxel of the middle of `slices` (the kept slice indices);
  necrosis in 60 % of patients. The metabolic lesion is the same lesion moved
  and rescaled by `METABOLIC_MARGIN`, with an edge of its own.
  """
  middle = np.zeros(brain.shape, bool)
  middle[..., slices[len(slices) // 4]:slices[3 * len(slices) // 4] + 1] = True
  candidates = np.argwhere(middle & (wm > 0.5) & (ndimage.distance_transform_edt(brain) > 4))
  centre_index = candidates[rng.integers(len(candidates))]
  centre = np.array([axes[a][centre_index[a]] for a in range(3)])
  radius = rng.uniform(10.0, 25.0) * rng.uniform(0.8, 1.25, size=3)
  necrotic = bool(rng.random() < 0.6)
  anatomical = LesionShape.random(rng, centre, radius, necrotic)
  shift = rng.normal(0.0, METABOLIC_MARGIN["shift_sd_mm"], size=3)
  scale = rng.uniform(*METABOLIC_MARGIN["scale"], size=3)
  metabolic = LesionShape.random(rng, centre + shift, radius * scale, necrotic)
  return anatomical, metabolic


def _lesion_labels(weights: dict[str, np.ndarray]) -> np.ndarray:
  labels = np.zeros(weights["tumour"].shape, np.uint8)
  for label, name in ((1, "oedema"), (2, "tumour"), (3, "necrosis")):
    labels[weights[name] > 0.5] = label
  return labels


def _blurred_noisy(image: np.ndarray, rng: np.random.Generator, brain: np.ndarray) -> np.ndarray:
  """`image` with its own Gaussian blur and noise (`ANATOMY_BLUR_VOXELS`, `ANATOMY_NOISE`)."""
  blurred = ndimage.gaussian_filter(image, sigma=rng.uniform(*ANATOMY_BLUR_VOXELS))
  level = np.percentile(blurred[brain], 99.5) * rng.uniform(*ANATOMY_NOISE)
  return blurred + level * rng.standard_normal(image.shape).astype(np.float32)


def simulate_patient(index: int, *, seed: int = 0, deformation_mm: float = 4.0,
                     decoupled: bool = True) -> Patient:
  """Simulates patient `index` (deterministic in `seed`, `index` and `decoupled`).

  `decoupled=False` builds the maps from the anatomical lesion itself, without the
  metabolites' own variation and without T1/FLAIR blur and noise: the phantom in
  which the anatomy marks exactly where the metabolism changes (for measuring how
  much that helps a network).
  """
  template = anatomy.load_template()
  rng = np.random.default_rng([seed, 1000 + index])
  low, high = template.brain_bounds()
  # The random fields, drawn in this order (the phantom depends on it).
  deformation = anatomy.SmoothField.random(rng, low, high, spacing_mm=20.0, num_components=3)
  field = anatomy.SmoothField.random(rng, low, high, spacing_mm=60.0,
                                       num_components=1 + len(METABOLITES))
  patches = anatomy.SmoothField.random(rng, low, high, spacing_mm=10.0, num_components=1)
  bias = anatomy.SmoothField.random(rng, low, high, spacing_mm=50.0, num_components=1)
  own = anatomy.SmoothField.random(rng, low, high, spacing_mm=15.0,
                                     num_components=len(METABOLITES))

  shape, affine, axes = _patient_grid(low, high)
  gm, wm, csf, brain, t1 = _tissues(template, shape, affine,
                                    deformation_mm * deformation.on_grid(axes))
  keep = _slices_with_brain(brain, rng)
  anatomical_shape, metabolic_shape = random_lesions(rng, axes, brain, wm, keep)
  lesion = anatomical_shape.weights(axes, brain)
  metabolic = metabolic_shape.weights(axes, brain) if decoupled else lesion
  quality, low_snr = _quality(patches.on_grid(axes)[..., 0], brain, csf)
  maps = _metabolite_maps(rng, gm, wm, brain, metabolic, low_snr, field.on_grid(axes),
                          own.on_grid(axes), INDEPENDENT_VARIATION if decoupled else {})
  t1, flair = _anatomical_images(rng, t1, bias.on_grid(axes)[..., 0], gm, wm, csf, brain,
                                 lesion, decoupled)

  to_slices = lambda a: np.moveaxis(a[..., keep], -1, 0)
  return Patient(
      name=f"p{index:02d}", maps=np.moveaxis(maps[..., keep], -1, 0).astype(np.float32),
      t1=to_slices(t1).astype(np.float32), flair=to_slices(flair).astype(np.float32),
      quality=to_slices(quality), brain=to_slices(brain),
      lesion=to_slices(_lesion_labels(lesion)),
      metabolic_lesion=to_slices(_lesion_labels(metabolic)),
      affine=affine @ nib.affines.from_matvec(np.eye(3), [0, 0, keep[0]]))


def _patient_grid(low: np.ndarray, high: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray,
                                                                list[np.ndarray]]:
  """(shape, affine, axes) of the MRSI grid over the brain's bounding box: MAP_SIZE² in-plane
  voxels of VOXEL_MM, as many slices as fit."""
  centre = (low + high) / 2
  shape = (MAP_SIZE, MAP_SIZE, int(np.floor((high[2] - low[2]) / VOXEL_MM)))
  affine = nib.affines.from_matvec(np.eye(3) * VOXEL_MM,
                                   centre - (np.asarray(shape) - 1) / 2 * VOXEL_MM)
  return shape, affine, anatomy.grid_axes(shape, affine)


def _tissues(template, shape, affine, displacement) -> tuple[np.ndarray, ...]:
  """(gm, wm, csf, brain, t1) of the template warped by `displacement` onto the grid; tissue
  fractions summing to at most 1, `brain` a bool mask."""
  wm, gm, csf, brain, t1 = anatomy.warp(
      [anatomy.prefiltered(n, VOXEL_MM) for n in ("wm", "gm", "csf", "brain", "t1")],
      template.affine, shape, affine, displacement)
  tissue = np.stack([gm, wm, csf], axis=-1)
  tissue /= np.maximum(tissue.sum(-1, keepdims=True), 1.0)
  gm, wm, csf = np.moveaxis(tissue, -1, 0)
  return gm, wm, csf, brain > 0.5, t1


def _quality(patch_field: np.ndarray, brain: np.ndarray, csf: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
  """(the quality mask, the low-SNR patches): voxels away from the skull, with little CSF,
  outside the noisiest LOW_SNR_FRACTION of them (by `patch_field`)."""
  away_from_skull = ndimage.distance_transform_edt(brain, sampling=VOXEL_MM) > SKULL_MARGIN_MM
  candidates = away_from_skull & (csf < CSF_LIMIT)
  low_snr = patch_field > np.quantile(patch_field[candidates], 1 - LOW_SNR_FRACTION)
  return candidates & ~low_snr, low_snr


def _metabolite_maps(rng: np.random.Generator, gm, wm, brain, metabolic: dict, low_snr,
                     fields: np.ndarray, own_fields: np.ndarray, own_amplitude: dict
                     ) -> np.ndarray:
  """(M, X, Y, Z) concentration maps: tissue concentrations, the lesion's, smooth variation
  (shared and each metabolite's own) and noise at each metabolite's SNR."""
  healthy = 1.0 - sum(metabolic.values())
  maps = []
  for m, name in enumerate(METABOLITES):
    gm_c, wm_c = CONCENTRATIONS[name]
    tissue_c = gm * gm_c + wm * wm_c
    # Inside the lesion, tumour replaces tissue: the GM/WM mean of the brain there.
    lesion_c = (gm + wm) * (gm_c + wm_c) / 2
    tumour, necrosis, oedema = LESION[name]
    concentration = (healthy * tissue_c + metabolic["oedema"] * oedema * tissue_c
                     + metabolic["tumour"] * tumour * lesion_c
                     + metabolic["necrosis"] * necrosis * lesion_c)
    variation = np.exp(0.07 * fields[..., 0] + 0.05 * fields[..., 1 + m]
                       + own_amplitude.get(name, 0.0) * own_fields[..., m])
    sigma = wm_c / SNR[name] * np.where(low_snr, LOW_SNR_NOISE_FACTOR, 1.0)
    noise = rng.standard_normal(brain.shape).astype(np.float32) * sigma
    maps.append((concentration * variation + noise) * brain)
  return np.stack(maps, axis=0)


def _anatomical_images(rng: np.random.Generator, t1, bias_field, gm, wm, csf, brain,
                       lesion: dict, decoupled: bool) -> tuple[np.ndarray, np.ndarray]:
  """(T1, FLAIR) in [0, 1]: the template's T1 and a tissue-mixed FLAIR, with a bias field, the
  lesion's contrast and (decoupled) blur and noise, each divided by its 99.5th percentile."""
  anatomy_healthy = 1.0 - sum(lesion.values())
  gain = rng.uniform(0.85, 1.15)
  t1 = t1 * np.exp(0.08 * bias_field) * gain
  t1 = t1 * (1 - 0.25 * lesion["tumour"] - 0.5 * lesion["necrosis"] - 0.1 * lesion["oedema"])
  flair = (anatomy_healthy * (FLAIR["wm"] * wm + FLAIR["gm"] * gm + FLAIR["csf"] * csf)
           + sum(FLAIR[k] * (gm + wm) * w for k, w in lesion.items()))
  flair = flair * np.exp(0.05 * bias_field)
  if decoupled:
    t1 = _blurred_noisy(t1 * brain, rng, brain)
    flair = _blurred_noisy(flair * brain, rng, brain)
  t1 = np.clip(t1 / np.percentile(t1[brain], 99.5), 0, 1) * brain
  flair = np.clip(flair / np.percentile(flair[brain], 99.5), 0, 1) * brain
  return t1, flair


def _slices_with_brain(brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """11–18 consecutive slice indices around the slices with the most brain."""
  area = brain.sum(axis=(0, 1))
  count = int(rng.integers(11, 19))
  best = int(np.argmax(np.convolve(area, np.ones(count), mode="valid")))
  return np.arange(best, best + count)


def cross_validation_split(num_patients: int = 15, fold: int = 0, num_folds: int = 5
                           ) -> dict[str, list[int]]:
  """Patient indices of `fold`: test = the fold's block, validation = the next block, train = rest.

  With 15 patients and 5 folds: 3 test, 3 validation and 9 training patients, and
  every patient is a test patient in exactly one fold.
  """
  if not 0 <= fold < num_folds or num_patients % num_folds:
    raise ValueError(f"fold {fold} of {num_folds} needs 0 <= fold < {num_folds} and a patient "
                     f"count ({num_patients}) divisible by the fold count")
  block = num_patients // num_folds
  blocks = [list(range(b * block, (b + 1) * block)) for b in range(num_folds)]
  test, val = blocks[fold], blocks[(fold + 1) % num_folds]
  return {"train": [p for p in range(num_patients) if p not in test + val],
          "val": val, "test": test}


def load_patients(cache_dir: str | os.PathLike, num_patients: int = 15, seed: int = 0, *,
                  decoupled: bool = True) -> list[Patient]:
  """The simulated patients, built once into `cache_dir/mrsi-<key>/` (.npz each) and read back."""
  params = {"version": DATASET_VERSION, "num_patients": num_patients, "seed": seed,
            "decoupled": bool(decoupled)}
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  folder = pathlib.Path(cache_dir).expanduser() / f"mrsi-{key}"
  folder.mkdir(parents=True, exist_ok=True)
  missing = [i for i in range(num_patients) if not (folder / f"p{i:02d}.npz").exists()]
  for index in tqdm(missing, desc=f"building the MRSI patients in {folder}", unit="patient",
                    dynamic_ncols=True, disable=not missing):
    patient = simulate_patient(index, seed=seed, decoupled=decoupled)
    temp = folder / f".{uuid.uuid4().hex}.npz"  # renamed when complete: no partial file
    np.savez_compressed(temp, **{f.name: getattr(patient, f.name)
                                 for f in dataclasses.fields(Patient)})
    os.replace(temp, folder / f"p{index:02d}.npz")
  patients = []
  for index in range(num_patients):
    with np.load(folder / f"p{index:02d}.npz") as arrays:
      patients.append(Patient(**{f.name: (str(arrays[f.name]) if f.name == "name"
                                          else arrays[f.name])
                                 for f in dataclasses.fields(Patient)}))
  return patients
