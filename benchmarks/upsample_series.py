"""Time and peak memory of `jaxsr upsample` on a whole 4D DWI series (docs/benchmarks.md).

  python -m benchmarks.upsample_series [--workdir runs/bench_series] [--volumes 65]
                                       [--max-memory 4G] [--adapt 0]

Input: an HCP-size series at 2.5 mm, 80 × 94 × 77 voxels × `--volumes` (b0s every
tenth volume, the rest b = 1000 s/mm² in random directions), int16 .nii.gz as
scanners write it, made once from the MNI ICBM152 tissue maps of the nilearn wheel
(each voxel's signal S0·exp(-b·ADC) mixed over WM/GM/CSF, a WM anisotropy along x,
Rician noise). Super-resolved 2× onto 1.25 mm with the shipped general model.

Two `/usr/bin/time -v jaxsr upsample` processes, alone on the machine:
1. the first volume alone (a 3D file): what one volume costs as its own command;
2. the whole series as one command.
Printed: wall time and peak resident memory of each, the series' per-volume time
(its upsampling stage over the volumes, from the sidecar's "timing"), and the
speed-up of the series command over running its volumes one command each.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import nibabel as nib
import numpy as np

from benchmarks import machine_report
from benchmarks.prepare_subject import dwi_volumes
from benchmarks.upsample_hcp import measure
from jaxsr import anatomy, nifti

SHAPE, VOXEL = (80, 94, 77), 2.5
B0_EVERY = 10


def gradient_table(num_volumes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(V,) bvals and (V, 3) bvecs: a b0 every `B0_EVERY` volumes, b = 1000 in random directions."""
  bvals = np.where(np.arange(num_volumes) % B0_EVERY == 0, 0.0, 1000.0)
  bvecs = rng.standard_normal((num_volumes, 3))
  bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
  bvecs[bvals == 0] = 0.0
  return bvals, bvecs


def make_series(folder: pathlib.Path, num_volumes: int) -> dict[str, pathlib.Path]:
  """Writes the series (once) into `folder`: {"dwi", "bval", "bvec", "first"} paths."""
  paths = {"dwi": folder / f"series_{num_volumes}.nii.gz",
           "bval": folder / f"series_{num_volumes}.bval",
           "bvec": folder / f"series_{num_volumes}.bvec",
           "first": folder / f"series_{num_volumes}_first.nii.gz"}
  if all(path.is_file() for path in paths.values()):
    return paths
  folder.mkdir(parents=True, exist_ok=True)
  template = anatomy.load_template()
  centre = nib.affines.apply_affine(template.affine, (np.asarray(template.t1.shape) - 1) / 2)
  affine = nib.affines.from_matvec(np.eye(3) * VOXEL,
                                   centre - (np.asarray(SHAPE) - 1) / 2 * VOXEL)
  wm, gm, csf = anatomy.warp([anatomy.prefiltered(n, VOXEL) for n in ("wm", "gm", "csf")],
                             template.affine, SHAPE, affine, np.zeros(SHAPE + (3,), np.float32))
  rng = np.random.default_rng(0)
  bvals, bvecs = gradient_table(num_volumes, rng)

  series = list(dwi_volumes(wm, gm, csf, bvals, bvecs, rng))
  nifti.write_volumes(paths["dwi"], SHAPE + (num_volumes,), affine, series, dtype=np.int16)
  nifti.write_volumes(paths["first"], SHAPE, affine, series[:1], dtype=np.int16)
  np.savetxt(paths["bval"], bvals[None], fmt="%d")
  np.savetxt(paths["bvec"], bvecs.T, fmt="%.6f")
  return paths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/bench_series", type=pathlib.Path)
  parser.add_argument("--volumes", default=65, type=int)
  parser.add_argument("--max-memory", default="4G")
  parser.add_argument("--adapt", default=0, type=int, help="--adapt STEPS for the series")
  args = parser.parse_args()
  paths = make_series(args.workdir, args.volumes)
  common = ["--voxel-size", str(VOXEL / 2), "--quiet", "--overwrite",
            "--max-memory", args.max_memory]
  print(machine_report())
  print(f"series {'×'.join(map(str, SHAPE))} × {args.volumes} at {VOXEL} mm -> {VOXEL / 2} mm, "
        f"shipped model, --max-memory {args.max_memory}, --adapt {args.adapt}\n")
  lone_out = args.workdir / "lone.nii.gz"
  lone_wall, lone_peak = measure(["jaxsr", "upsample", "--input", str(paths["first"]),
                                  "--out", str(lone_out), *common])
  lone = json.loads(lone_out.with_suffix("").with_suffix(".json").read_text())
  series_out = args.workdir / "series.nii.gz"
  adapt = ["--adapt", str(args.adapt)] if args.adapt else []
  series_wall, series_peak = measure(
      ["jaxsr", "upsample", "--input", str(paths["dwi"]), "--bvals", str(paths["bval"]),
       "--bvecs", str(paths["bvec"]), "--out", str(series_out), *adapt, *common])
  series = json.loads(series_out.with_suffix("").with_suffix(".json").read_text())
  per_volume = series["timing"]["volumes"] / args.volumes
  lone_volume = lone["timing"]["volumes"]
  print("| command | wall (s) | peak RSS (MiB) | upsampling per volume (s) |\n|---|---|---|---|")
  print(f"| one volume alone | {lone_wall:.1f} | {lone_peak:.0f} | {lone_volume:.2f} |")
  print(f"| the series, {args.volumes} volumes | {series_wall:.1f} | {series_peak:.0f} | "
        f"{per_volume:.2f} |")
  print(f"\nseries timing (s): {series['timing']}")
  print(f"per volume: {per_volume / lone_volume:.0%} of a lone volume's upsampling; "
        f"{series_wall / args.volumes:.2f} s of wall time per volume; speed-up over one "
        f"command per volume: {lone_wall * args.volumes / series_wall:.2f}×")


if __name__ == "__main__":
  main()
