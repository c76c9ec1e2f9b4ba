"""Domain-randomised training patches: MR images of many kinds rendered from real anatomy.

A model trained on one phantom learns that phantom. Here every training example
is a new image (the approach of SynthSR for contrast and resolution): an HR
patch is rendered from the MNI ICBM152 tissue maps (WM, GM, CSF; 1 mm, inside
the nilearn wheel) and degraded by a random acquisition, so what the model can
learn is what all of them share: anatomy seen through an MR scanner.

Per patch (`render_patch`):
  geometry   HR voxels of 1-2.5 mm, the acquisition axial, sagittal or coronal
             with a random tilt (sd 10 degrees), affine scaling of +-15 % per
             axis, flips, a smooth non-linear warp (up to 4 mm), and a centre
             anywhere in the brain or, for 15 % of patches, anywhere in the head
             (partial fields of view, background in the patch);
  anatomy    partial-volume fractions blended a random amount towards their hard
             labels (individual brains have sharper tissue borders than the
             average template), a skull and scalp of random thickness and signal;
  contrast   b0-like (bright CSF), b=1000-like (dark CSF), T1-like, T2*-EPI-like
             or random tissue intensities, each jittered, a within-tissue texture,
             a smooth multiplicative bias field, a power-law intensity
             non-linearity and a random gain;
  noise      magnitude noise of 1, 2 or 4 receive channels (Rician, non-central
             chi) at SNR 5-40 everywhere, the background included; the target is
             this noisy HR image (the protocol of a real-scan evaluation, where
             the reference is itself a scan) and, for 30 % of patches, the LR
             image gets further noise of its own (an LR acquisition's);
  resolution per-axis factors (x, y in-plane alike, z through-plane): isotropic,
             in-plane only, through-plane only or anisotropic, from
             `axis_scales`; the LR patch is the HR one degraded by a random
             `jaxsr.dmri.degradation.psf` PSF (cubic, block, Gaussian of FWHM 0.7-1.5 LR
             voxels, k-space truncation).

Three options make the images more like real scans (`RandomisedSampler`):
  per_axis_psf  the in-plane and through-plane PSFs are drawn apart, in-plane
                k-space truncation over half the time (half, plus its share of
                the uniform draw otherwise: as MRI acquires in-plane), and
                k-space truncation with a scanner's raised-cosine k-space filter
                (up to Hamming) half the times it is drawn;
  fine_texture  detail at the scale of a few voxels (a fine multiplicative
                texture of max(shape) / 2 bumps per axis: a few voxels apart along
                the longest axis, closer along shorter ones) and, in half the
                patches, small sharp spots inside the
                brain (vessels, perivascular spaces), which the smooth average
                template lacks;
  kspace_margin k-space truncation in context: the patch is rendered with that many
                LR voxels more on each side of the axes a truncation degrades (its
                random fields as smooth per voxel as the patch's alone) and cropped
                after degrading, as a scanner truncates a whole field of view.

Compiled shapes: the LR patch is always `lr_patch_size`^3 and the HR patch
(round(l s_xy), round(l s_xy), round(l s_z)), one factor pair per batch, so a
run compiles at most len(axis_scales)^2 - 1 train steps (`hr_shapes`).
Intensities come out with the brightest tissue near 1 (times the gain), the
scale `jaxsr upsample` gives a user's scan (`intensity_scale`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np
from scipy import ndimage, special

from jaxsr import anatomy
from jaxsr.dmri.degradation import psf as psf_lib

# Relative WM, GM, CSF signal of each contrast (brightest tissue 1):
# b0 from phantom.WM/GM/CSF s0 (1 : 1.3 : 3); b=1000 s/mm^2 from exp(-b MD) with
# MD 0.8e-3 (tissue) and 3e-3 (CSF); T1-weighted and T2*-EPI as in typical 3 T images.
CONTRASTS = {
    "b0": (0.33, 0.43, 1.0),
    "dwi": (1.0, 0.9, 0.12),
    "t1": (1.0, 0.65, 0.18),
    "t2": (0.45, 0.6, 1.0),
}
PRE_FILTER_MM = (1.0, 1.5, 2.0, 2.5)  # anatomy pre-filtered for these HR voxel sizes


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """Template maps on its 1 mm grid, pre-filtered per HR voxel size.

  Attributes:
    maps: voxel size (mm) -> (4, X, Y, Z) float32 WM, GM, CSF fractions and the
      intracranial region, anti-aliased for sampling at that voxel size.
    outside_mm: (X, Y, Z) float32 distance (mm) outside the intracranial region
      (0 inside): where skull and scalp are drawn.
    brain_voxels: (K, 3) template voxels inside the brain (patch centres).
    head_voxels: (H, 3) template voxels within 15 mm of it (off-centre patches).
  """
  maps: dict
  outside_mm: np.ndarray
  brain_voxels: np.ndarray
  head_voxels: np.ndarray


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
  """The template's anatomy (`anatomy.load_template`), prepared once per process."""
  template = anatomy.load_template()
  base = np.stack([template.wm, template.gm, template.csf, template.brain]).astype(np.float32)
  maps = {}
  for voxel in PRE_FILTER_MM:
    sigma = math.sqrt(max(voxel**2 - 1.0, 0.0)) * psf_lib.FWHM_TO_SIGMA
    maps[voxel] = np.stack([ndimage.gaussian_filter(m, sigma) for m in base]) if sigma else base
  inside = template.brain > 0.5
  outside_mm = ndimage.distance_transform_edt(~inside).astype(np.float32)
  return Anatomy(maps=maps, outside_mm=outside_mm, brain_voxels=np.argwhere(inside),
                 head_voxels=np.argwhere(outside_mm < 15.0))


def hr_shapes(lr_patch_size: int, axis_scales: Sequence[float]) -> list[tuple[int, int, int]]:
  """Every HR patch shape (x, y, z) a run can draw: (s_xy, s_z) pairs from `axis_scales`, not (1, 1)."""
  sizes = sorted({int(round(lr_patch_size * s)) for s in axis_scales})
  return [(a, a, b) for a in sizes for b in sizes if not a == b == lr_patch_size]


def random_rotation(rng: np.random.Generator, tilt_sd_deg: float) -> np.ndarray:
  """(3, 3): an axial, sagittal or coronal acquisition with random flips, tilted by N(0, sd)."""
  base = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)[:, None]
  axis = rng.standard_normal(3)
  axis /= np.linalg.norm(axis)
  angle = math.radians(rng.normal(0.0, tilt_sd_deg))
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  tilt = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k  # Rodrigues
  return tilt @ base


@functools.lru_cache(maxsize=256)
def _bump_weights(n: int, control: int) -> np.ndarray:
  """(n, control) Gaussian bumps on `control` evenly spaced centres, rows of unit L2 norm."""
  x = (np.arange(n) + 0.5) / n
  centres = (np.arange(control) + 0.5) / control
  weights = np.exp(-0.5 * ((x[:, None] - centres[None, :]) * control) ** 2)
  return (weights / np.linalg.norm(weights, axis=1, keepdims=True)).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], control: int | Sequence[int],
                 channels: int = 1) -> np.ndarray:
  """(channels, *shape) float32 smooth random field of unit sd: N(0, 1) weights of bumps on a
  grid of `control` centres per axis (one number: the same along every axis)."""
  controls = (control,) * 3 if isinstance(control, (int, np.integer)) else tuple(control)
  field = rng.standard_normal((channels, *controls)).astype(np.float32)
  for n, c in zip(shape, controls):  # each contraction moves the new axis last
    field = np.tensordot(field, _bump_weights(int(n), int(c)), axes=([1], [1]))
  return field


def field_controls(control: int, shape: Sequence[int], frame: Sequence[int] | None
                   ) -> int | tuple[int, ...]:
  """Bumps per axis for a field over `shape` as smooth per voxel as `control` bumps over
  `frame` (None: `shape` itself, `control`)."""
  if frame is None or tuple(frame) == tuple(shape):
    return control
  return tuple(max(1, int(round(control * n / f))) for n, f in zip(shape, frame))


def sample_points(anatomy: Anatomy, rng: np.random.Generator, hr_shape: Sequence[int],
                  voxel_mm: float, warp_mm: float, frame: Sequence[int] | None = None
                  ) -> np.ndarray:
  """(3, X, Y, Z) template voxel coordinates of the HR patch's voxel centres (the warp as
  smooth per voxel as over `frame`, `render_patch`)."""
  rotation = random_rotation(rng, tilt_sd_deg=10.0)
  scaling = rng.uniform(0.85, 1.15, size=3) * voxel_mm
  matrix = rotation * scaling[None, :]  # patch voxel offsets -> template mm (= voxels, 1 mm)
  pool = anatomy.head_voxels if rng.random() < 0.15 else anatomy.brain_voxels
  centre = pool[rng.integers(len(pool))] + rng.uniform(-0.5, 0.5, size=3)
  offsets = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in hr_shape],
                                 indexing="ij"))
  points = np.tensordot(matrix, offsets, axes=1) + centre[:, None, None, None]
  if warp_mm > 0:
    points += warp_mm * smooth_field(rng, hr_shape, field_controls(3, hr_shape, frame), 3)
  return points.astype(np.float32)


def render_patch(anatomy: Anatomy, rng: np.random.Generator, hr_shape: Sequence[int],
                 fine_texture: bool = False, frame: Sequence[int] | None = None) -> np.ndarray:
  """One noisy HR patch (X, Y, Z) float32 of a random contrast (see the module docstring).

  `frame`: the shape whose extent the random fields (warp, texture, spots, bias) are scaled
  to, where the patch is rendered larger than the part kept (`RandomisedSampler`'s
  k-space margin): the kept part then has the statistics of a patch of that shape.
  """
  voxel_mm = rng.uniform(1.0, 2.5)
  level = min(PRE_FILTER_MM, key=lambda v: abs(v - voxel_mm))
  points = sample_points(anatomy, rng, hr_shape, voxel_mm, warp_mm=rng.uniform(0.0, 4.0),
                         frame=frame)
  extent = tuple(frame) if frame is not None else tuple(hr_shape)
  controls = functools.partial(field_controls, shape=hr_shape, frame=frame)
  wm, gm, csf, brain = (ndimage.map_coordinates(m, points, order=1, mode="constant", cval=0.0)
                        for m in anatomy.maps[level])
  outside = ndimage.map_coordinates(anatomy.outside_mm, points, order=1, mode="nearest")

  # Partial-volume fractions blended towards hard labels (the rest is background/extra-cerebral).
  fractions = np.stack([wm, gm, csf, np.clip(1.0 - wm - gm - csf, 0.0, 1.0)])
  hard = np.eye(4, dtype=np.float32)[np.argmax(fractions, axis=0)]
  alpha = rng.uniform(0.0, 1.0)
  fractions = (1 - alpha) * fractions + alpha * np.moveaxis(hard, -1, 0)

  contrast = rng.choice(list(CONTRASTS) + ["random"], p=[0.25, 0.25, 0.15, 0.15, 0.2])
  means = (rng.uniform(0.05, 1.0, size=3) if contrast == "random"
           else np.asarray(CONTRASTS[contrast]) * rng.uniform(0.8, 1.25, size=3))
  texture = 1.0 + rng.uniform(0.0, 0.25) * smooth_field(rng, hr_shape, controls(6), channels=3)
  if fine_texture:
    fine = max(4, max(extent) // 2)  # bumps a few voxels apart
    texture = texture * (1.0 + rng.uniform(0.0, 0.15)
                         * smooth_field(rng, hr_shape, controls(fine), channels=3))
  image = np.einsum("t,t...->...", means, fractions[:3] * texture)
  if fine_texture and rng.random() < 0.5:
    spots = smooth_field(rng, hr_shape, controls(max(4, max(extent) // 2)))[0] > 2.0
    image = image + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.5) * max(means) * spots * (
        brain > 0.5)
    image = np.clip(image, 0.0, None)

  # Skull (dark) and scalp (any signal), both outside the intracranial region.
  skull = rng.uniform(2.0, 7.0)
  scalp = rng.uniform(2.0, 8.0)
  scalp_signal = rng.uniform(0.0, 0.8) * max(means)
  in_scalp = special.expit(2 * (outside - skull)) * special.expit(2 * (skull + scalp - outside))
  image = image + (1.0 - brain.clip(0, 1)) * fractions[3] * scalp_signal * in_scalp

  bias = np.exp(rng.uniform(0.0, 0.3) * smooth_field(rng, hr_shape, controls(3))[0])
  image = np.clip(image * bias / max(means), 0.0, None) ** rng.uniform(0.75, 1.33)
  image = image * rng.uniform(0.6, 1.1)

  # Magnitude noise of `coils` channels at SNR 5-40 relative to the mean tissue signal.
  tissue = brain > 0.5
  reference = float(image[tissue].mean()) if tissue.any() else 0.5
  sigma = reference / math.exp(rng.uniform(math.log(5.0), math.log(40.0)))
  coils = int(rng.choice([1, 1, 2, 4]))
  channel_signal = image / math.sqrt(coils)
  noise = rng.standard_normal((coils, 2) + tuple(hr_shape)).astype(np.float32) * sigma
  magnitude = np.sqrt(((channel_signal + noise[:, 0]) ** 2 + noise[:, 1] ** 2).sum(axis=0))
  return magnitude.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of a drawn acquisition: `axes` degraded by `kind` (Gaussian FWHM in LR voxels,
  k-space window strength)."""
  kind: str
  axes: tuple[int, ...]
  fwhm: float = 1.0
  apodisation: float = 0.0


def draw_degradation(rng: np.random.Generator, psfs: Sequence[str], per_axis: bool = False
                     ) -> tuple[Stage, ...]:
  """The PSF of a random acquisition from `psfs` (Gaussian FWHM 0.7-1.5 LR voxels); with
  `per_axis`, in-plane (x, y) then through-plane (z) apart (module docstring)."""
  if not per_axis:
    kind = str(rng.choice(psfs))
    return (Stage(kind, (0, 1, 2), rng.uniform(0.7, 1.5) if kind == "gaussian" else 1.0),)
  in_plane = ("kspace" if "kspace" in psfs and rng.random() < 0.5 else str(rng.choice(psfs)))
  stages = []
  for kind, axes in ((in_plane, (0, 1)), (str(rng.choice(psfs)), (2,))):
    fwhm = rng.uniform(0.7, 1.5) if kind == "gaussian" else 1.0
    apodisation = rng.uniform(0.0, 0.46) if kind == "kspace" and rng.random() < 0.5 else 0.0
    stages.append(Stage(kind, axes, fwhm, round(apodisation, 2)))
  return tuple(stages)


def apply_degradation(hr: np.ndarray, lr_shape: Sequence[int], stages: Sequence[Stage]
                      ) -> np.ndarray:
  """`hr` (X, Y, Z) degraded to `lr_shape` by `stages`, one after the other."""
  out = hr
  for stage in stages:
    shape = tuple(lr_shape[a] if a in stage.axes else out.shape[a] for a in range(3))
    out = psf_lib.degrade(out, shape, stage.kind, stage.fwhm, stage.apodisation)
  return out


def random_degradation(rng: np.random.Generator, hr: np.ndarray, lr_shape: Sequence[int],
                       psfs: Sequence[str], per_axis: bool = False) -> np.ndarray:
  """`hr` degraded to `lr_shape` by a PSF drawn from `psfs` (`draw_degradation`)."""
  return apply_degradation(hr, lr_shape, draw_degradation(rng, psfs, per_axis))


def kspace_margins(stages: Sequence[Stage], scales: Sequence[float], margin: int
                   ) -> tuple[int, int, int]:
  """LR voxels to render beyond each side of the patch: `margin` along each degraded axis
  whose PSF is k-space truncation, 0 elsewhere."""
  out = [0, 0, 0]
  for stage in stages:
    for a in stage.axes:
      if stage.kind == "kspace" and scales[a] > 1:
        out[a] = margin
  return tuple(out)


def degrade_in_context(padded: np.ndarray, margins: Sequence[int], lr_size: int,
                       stages: Sequence[Stage]) -> tuple[np.ndarray, np.ndarray]:
  """(HR, LR): the centre of `padded` (X + 2 m_x s_x, ...) and the centre lr_size^3 of its
  degradation by `stages`, `margins` (m_x, m_y, m_z) LR voxels cropped off each side.

  The LR grid of the padded field keeps the patch's factors s = X / lr_size, so its voxel
  m + j is centred where the patch's LR voxel j would be.
  """
  lr_shape = [lr_size + 2 * m for m in margins]
  hr_margins = [int(round(m * n / l)) for m, n, l in zip(margins, padded.shape, lr_shape)]
  low = apply_degradation(padded, lr_shape, stages)
  hr = padded[tuple(slice(h, n - h) for h, n in zip(hr_margins, padded.shape))]
  return hr, low[tuple(slice(m, m + lr_size) for m in margins)]


def draw_scales(rng: np.random.Generator, axis_scales: Sequence[float]) -> tuple[float, float]:
  """(s_xy, s_z): isotropic 35 %, in-plane only 25 %, through-plane only 20 %, anisotropic 20 %."""
  factors = [s for s in axis_scales if s > 1]
  pattern = rng.choice(4, p=[0.35, 0.25, 0.2, 0.2])
  a, b = rng.choice(factors), rng.choice(factors)
  return [(a, a), (a, 1.0), (1.0, a), (a, b)][pattern]


@dataclasses.dataclass
class RandomisedSampler:
  """Batches of rendered HR patches and their LR acquisitions (a grain `random_map` callable).

  Attributes:
    lr_patch_size: LR patch edge l (voxels).
    axis_scales: per-axis factors to draw from (1 = that axis not degraded).
    psfs: PSFs to draw from (`jaxsr.dmri.degradation.psf.PSFS`).
    per_axis_psf, fine_texture: the options of the module docstring.
    kspace_margin: LR voxels rendered beyond each side of the patch along the axes a
      k-space truncation degrades, and cropped off after degrading (0: none, the patch
      itself is truncated, as if periodic). A scanner truncates the spectrum of the whole
      field of view, whose edges are background; a patch's own spectrum wraps its
      opposite faces into each other, which no scan shows.
    lr_noise_fraction: share of patches whose LR image gets noise of its own.
    length: nominal examples per epoch (every example is new; this only sets
      how grain numbers them).
  """
  lr_patch_size: int
  axis_scales: Sequence[float]
  psfs: Sequence[str] = psf_lib.PSFS
  per_axis_psf: bool = False
  fine_texture: bool = False
  kspace_margin: int = 0
  lr_noise_fraction: float = 0.3
  length: int = 1 << 20

  def __post_init__(self):
    for kind in self.psfs:
      psf_lib.check_psf(kind)
    if not any(s > 1 for s in self.axis_scales) or min(self.axis_scales) < 1:
      raise ValueError(f"axis_scales must be >= 1 with one > 1, got {tuple(self.axis_scales)}")
    self.hr_shapes = hr_shapes(self.lr_patch_size, self.axis_scales)
    if self.kspace_margin < 0 or any(
        abs(self.kspace_margin * s - round(self.kspace_margin * s)) > 1e-6
        for s in self.axis_scales):
      raise ValueError(f"kspace_margin x each axis scale must be a whole number of HR voxels, "
                       f"got {self.kspace_margin} and {tuple(self.axis_scales)}")

  def __len__(self) -> int:
    return self.length

  def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{'hr': (B, X, Y, Z), 'lr': (B, l, l, l)} float32; one (s_xy, s_z) per batch."""
    anatomy = load_anatomy()
    l = self.lr_patch_size
    s_xy, s_z = draw_scales(rng, self.axis_scales)
    hr_shape = (int(round(l * s_xy)),) * 2 + (int(round(l * s_z)),)
    hr, lr = [], []
    for _ in range(len(indices)):
      if self.kspace_margin:
        patch, low = self._with_margin(anatomy, rng, hr_shape, (s_xy, s_xy, s_z))
      else:  # the draws in the order of the runs before the margin existed
        patch = render_patch(anatomy, rng, hr_shape, self.fine_texture)
        low = random_degradation(rng, patch, (l, l, l), self.psfs, self.per_axis_psf)
      if rng.random() < self.lr_noise_fraction:
        sigma = rng.uniform(0.005, 0.03)
        noise = rng.standard_normal((2,) + low.shape).astype(np.float32) * sigma
        low = np.hypot(low + noise[0], noise[1])
      hr.append(patch)
      lr.append(low)
    return {"hr": np.stack(hr), "lr": np.stack(lr).astype(np.float32)}

  def _with_margin(self, anatomy: Anatomy, rng: np.random.Generator,
                   hr_shape: Sequence[int], scales: Sequence[float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """An (HR, LR) pair whose k-space-truncated axes were degraded with `kspace_margin` LR
    voxels of context on each side (`degrade_in_context`)."""
    stages = draw_degradation(rng, self.psfs, self.per_axis_psf)
    margins = kspace_margins(stages, scales, self.kspace_margin)
    padded_shape = [n + 2 * int(round(m * s)) for n, m, s in zip(hr_shape, margins, scales)]
    padded = render_patch(anatomy, rng, padded_shape, self.fine_texture, frame=hr_shape)
    return degrade_in_context(padded, margins, self.lr_patch_size, stages)
