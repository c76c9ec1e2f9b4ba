"""Memory and time of preparing an HCP-size subject, and bytes read per training patch.

  python -m benchmarks.prepare_subject [--workdir runs/bench_prepare] [--gzip] [--patches 200]

1. Writes, once, an HCP-size subject in the HCP layout: `data.nii` (uncompressed int16, or
   `data.nii.gz` with --gzip) of 145 × 174 × 145 × 288 voxels at 1.25 mm (18 b0 and 90
   directions at each of b = 1000, 2000, 3000 s/mm², b0s interleaved as in HCP), written
   volume by volume. Content: the MNI ICBM152 tissue maps of the nilearn wheel on HCP's
   grid, each voxel's signal S0·exp(-b·ADC) mixed over WM/GM/CSF (S0 1000/1300/3000,
   ADC 0.8/0.8/3.0 µm²/ms, a WM anisotropy along x), Rician noise σ = 20; the template's
   brain mask and its T1 at 1.25 mm.
2. Prepares it (`jaxsr.dmri.data.subjects.load_hcp_subject`: b1000 shell / mean b0, T1 onto
   the DWI grid, cache) in a child process and prints its peak resident memory and time.
3. Bytes read from storage per training patch (a 30³ crop of one volume, the largest HR
   patch of the default configuration, and its T1 crop) from a cold page cache: the
   cache files are evicted (posix_fadvise DONTNEED) before every patch, so each patch
   costs what it would with data far larger than RAM; counted by the kernel
   (/proc/self/io read_bytes). Compared: the cache as jaxsr stores it (volume-major,
   random-access advice) and the volume-last layout it replaced, each with and without
   the advice. Also patches per second from the cold cache.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import pathlib
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

from benchmarks import machine_report
from jaxsr import anatomy, nifti

SHAPE = (145, 174, 145)
AFFINE = nib.affines.from_matvec(np.diag([-1.25, 1.25, 1.25]), [90.0, -126.0, -72.0])
NUM_B0, NUM_DIRECTIONS, SHELLS = 18, 90, (1000.0, 2000.0, 3000.0)
PATCH = 30


def gradient_table(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """HCP-like (V,) bvals and (V, 3) bvecs: 18 b0s interleaved among 3 × 90 directions."""
  weighted = np.repeat(SHELLS, NUM_DIRECTIONS)
  directions = rng.standard_normal((len(weighted), 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  num = len(weighted) + NUM_B0
  is_b0 = np.zeros(num, bool)
  is_b0[np.linspace(0, num, NUM_B0, endpoint=False).astype(int)] = True
  bvals, bvecs = np.zeros(num), np.zeros((num, 3))
  bvals[~is_b0], bvecs[~is_b0] = weighted, directions
  return bvals, bvecs


def dwi_volumes(wm: np.ndarray, gm: np.ndarray, csf: np.ndarray, bvals, bvecs,
                rng: np.random.Generator):
  """The DWI volumes of tissue maps (X, Y, Z), one per (b, g), as an iterator: each voxel's
  signal S0·exp(-b·ADC) mixed over WM/GM/CSF (S0 1000/1300/3000, ADC 0.8/0.8/3.0 µm²/ms, a
  WM anisotropy along x), Rician noise σ = 20, rounded."""
  for b, g in zip(bvals, bvecs):
    anisotropy = np.exp(-b * 0.9e-3 * (g[0] ** 2 - 1 / 3))  # WM fibres along x
    clean = 1000.0 * (wm * np.exp(-b * 0.8e-3) * anisotropy + 1.3 * gm * np.exp(-b * 0.8e-3)
                      + 3.0 * csf * np.exp(-b * 3.0e-3))
    noise = rng.standard_normal((2,) + wm.shape, dtype=np.float32) * 20.0
    yield np.round(np.hypot(clean + noise[0], noise[1]))


def make_subject(folder: pathlib.Path, compress: bool) -> pathlib.Path:
  """Writes the HCP-size subject into `folder` (once); returns the folder."""
  name = "data.nii.gz" if compress else "data.nii"
  if (folder / name).is_file():
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  template = anatomy.load_template()
  maps = anatomy.warp([anatomy.prefiltered(n, 1.25) for n in ("wm", "gm", "csf", "brain", "t1")],
                      template.affine, SHAPE, AFFINE, np.zeros(SHAPE + (3,), np.float32))
  wm, gm, csf, brain, t1 = maps
  rng = np.random.default_rng(0)
  bvals, bvecs = gradient_table(rng)

  temp = folder / f"tmp-{name}"  # keeps the extension: nibabel compresses by it
  nifti.write_volumes(temp, SHAPE + (len(bvals),), AFFINE,
                      dwi_volumes(wm, gm, csf, bvals, bvecs, rng), dtype=np.int16)
  np.savetxt(folder / "bvals", bvals[None], fmt="%d")
  np.savetxt(folder / "bvecs", bvecs.T, fmt="%.6f")
  nifti.save_volume(folder / "nodif_brain_mask.nii.gz", brain > 0.5, AFFINE)
  nifti.save_volume(folder / "T1w.nii.gz", np.round(1000 * t1).astype(np.int16), AFFINE)
  os.replace(temp, folder / name)
  return folder


def prepare_in_child(folder: pathlib.Path, cache: pathlib.Path) -> dict:
  """Peak RSS and seconds of `load_hcp_subject` in a fresh process (the import included)."""
  code = ("import json, resource, sys, time\n"
          "from jaxsr.dmri.data import subjects\n"
          "start = time.perf_counter()\n"
          "s = subjects.load_hcp_subject(sys.argv[1], cache_dir=sys.argv[2])\n"
          "print(json.dumps({'seconds': time.perf_counter() - start, 'shell': s.dwi.shape,\n"
          "  'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))\n")
  out = subprocess.run([sys.executable, "-c", code, os.fspath(folder), os.fspath(cache)],
                       capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f"preparation failed:\n{out.stderr}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _read_bytes() -> int:
  with open("/proc/self/io") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def _evict(paths) -> None:
  for path in paths:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def _open(path: pathlib.Path, random_access: bool) -> np.ndarray:
  array = np.load(path, mmap_mode="r")
  if random_access:
    array._mmap.madvise(mmap.MADV_RANDOM)
  return array


def patch_reads(dwi_path: pathlib.Path, t1_path: pathlib.Path, volume_major: bool,
                random_access: bool, mask: np.ndarray, num_patches: int) -> dict:
  """Mean bytes read from storage per (DWI + T1) patch, and patches per second, from cold."""
  rng = np.random.default_rng(1)
  brain = np.argwhere(mask)
  total_bytes, seconds = 0, 0.0
  for _ in range(num_patches):
    _evict([dwi_path, t1_path])
    dwi, t1 = _open(dwi_path, random_access), _open(t1_path, random_access)
    num_volumes = dwi.shape[0] if volume_major else dwi.shape[-1]
    volume = int(rng.integers(num_volumes))
    corner = np.clip(brain[rng.integers(len(brain))] - PATCH // 2, 0, np.array(SHAPE) - PATCH)
    window = tuple(slice(c, c + PATCH) for c in corner)
    before, start = _read_bytes(), time.perf_counter()
    patch = np.array(dwi[(volume,) + window] if volume_major else dwi[window + (volume,)])
    np.array(t1[window])
    seconds += time.perf_counter() - start
    total_bytes += _read_bytes() - before
    del dwi, t1
  patch_bytes = 2 * patch.nbytes  # the DWI and T1 crops
  return {"layout": "volume-major (K, X, Y, Z)" if volume_major else "volume-last (X, Y, Z, K)",
          "random_access_advice": random_access,
          "bytes_read_per_patch": total_bytes / num_patches, "patch_bytes": patch_bytes,
          "amplification": total_bytes / num_patches / patch_bytes,
          "patches_per_s": num_patches / seconds}


def volume_last_copy(volume_major: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """The cache's shell in the volume-last layout that jaxsr used before (for the comparison)."""
  if not out.is_file():
    data = np.load(volume_major, mmap_mode="r")
    np.save(out, np.moveaxis(np.asarray(data), 0, -1))  # C-order copy: volumes interleaved
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/bench_prepare", type=pathlib.Path)
  parser.add_argument("--gzip", action="store_true", help="data.nii.gz instead of data.nii")
  parser.add_argument("--patches", type=int, default=200)
  args = parser.parse_args(argv)
  print(machine_report())
  folder = make_subject(args.workdir / ("subject_gz" if args.gzip else "subject"), args.gzip)
  cache = args.workdir / "cache"
  if cache.exists():
    shutil.rmtree(cache)
  prepared = prepare_in_child(folder, cache)
  print(f"preparation: peak RSS {prepared['peak_rss_bytes'] / 2**30:.2f} GiB, "
        f"{prepared['seconds']:.1f} s, shell {prepared['shell']}")
  (entry,) = cache.iterdir()
  mask = np.load(entry / "mask.npy")
  rows = [patch_reads(entry / "dwi.npy", entry / "t1.npy", True, advice, mask, args.patches)
          for advice in (True, False)]
  old = volume_last_copy(entry / "dwi.npy", args.workdir / "dwi_volume_last.npy")
  rows += [patch_reads(old, entry / "t1.npy", False, advice, mask, args.patches)
           for advice in (True, False)]
  print("| layout | random-access advice | KiB read per patch | × patch bytes | patches/s |")
  print("|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['layout']} | {'yes' if row['random_access_advice'] else 'no'} | "
          f"{row['bytes_read_per_patch'] / 1024:,.0f} | {row['amplification']:.1f} | "
          f"{row['patches_per_s']:.0f} |")


if __name__ == "__main__":
  main()
