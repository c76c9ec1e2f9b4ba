"""Time and peak memory of `jaxsr upsample` on an HCP-size volume (docs/inference.md).

  python -m benchmarks.upsample_hcp [--workdir runs/bench_upsample] [--budgets 4G,2G,1G]

Input: the MNI ICBM152 T1 from the nilearn wheel resampled onto a 2.5 mm grid of
73 × 87 × 73 voxels (HCP's field of view), super-resolved to HCP's 1.25 mm grid of
145 × 174 × 145 voxels (`--shape`), with that template at 1 mm as the T1. Model:
the default CSR-dMRI architecture (RDN 64/64/8×3 → 128, MLP 8×256, DWI + T1), from a
run trained for one step, since time and memory do not depend on the weights.
Each budget is one `/usr/bin/time -v jaxsr upsample ... --max-memory B` process;
its wall time and maximum resident set size are printed as a Markdown table,
with the machine and versions.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

import nibabel as nib
import nibabel.processing
import numpy as np

from benchmarks import machine_report
from configs import csr_dmri
from jaxsr import anatomy, registry

LR_SHAPE, LR_VOXEL = (73, 87, 73), 2.5
HR_SHAPE = (145, 174, 145)


def default_model_run(workdir: pathlib.Path) -> pathlib.Path:
  """A run of the default architecture, trained one step on the quick data (once)."""
  config = csr_dmri.get_config("quick")
  default = csr_dmri.get_config()
  config.model = default.model
  config.batch_size = 1
  config.train.num_steps = 1
  config.train.checkpoint_every_steps = 1
  registry.train(config, workdir)
  return workdir


def hcp_size_inputs(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(2.5 mm input, 1 mm T1) NIfTI files made from the template in the nilearn wheel."""
  t1_path = pathlib.Path(anatomy.TEMPLATE_DIR) / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
  t1 = nib.load(t1_path)
  centre = nib.affines.apply_affine(t1.affine, (np.asarray(t1.shape) - 1) / 2)
  affine = nib.affines.from_matvec(np.eye(3) * LR_VOXEL,
                                   centre - (np.asarray(LR_SHAPE) - 1) / 2 * LR_VOXEL)
  lr = nib.processing.resample_from_to(t1, (LR_SHAPE, affine), order=3)
  lr_path = folder / "hcp_size_2.5mm.nii.gz"
  nib.save(nib.Nifti1Image(np.asarray(lr.dataobj, np.float32), affine), str(lr_path))
  return lr_path, t1_path


def measure(command: list[str]) -> tuple[float, float]:
  """(wall seconds, peak resident MiB) of `command` under /usr/bin/time -v."""
  result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
  wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr)[1]
  seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
  rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
  print(result.stdout.strip(), file=sys.stderr)
  return seconds, rss_kib / 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/bench_upsample", type=pathlib.Path)
  parser.add_argument("--budgets", default="4G,2G,1G",
                      help="comma-separated --max-memory values, one process each")
  args = parser.parse_args()
  args.workdir.mkdir(parents=True, exist_ok=True)
  run = default_model_run(args.workdir / "default_model")
  lr_path, t1_path = hcp_size_inputs(args.workdir)
  print(machine_report())
  print(f"input {'×'.join(map(str, LR_SHAPE))} at {LR_VOXEL} mm + 1 mm T1 -> "
        f"{'×'.join(map(str, HR_SHAPE))}; default CSR-dMRI architecture\n")
  print("| --max-memory | wall time (s) | peak RSS (MiB) |\n|---|---|---|")
  for budget in args.budgets.split(","):
    out = args.workdir / f"out_{budget}.nii.gz"
    seconds, peak = measure(["jaxsr", "upsample", "--checkpoint", str(run), "--dwi", str(lr_path),
                             "--t1", str(t1_path), "--shape", ",".join(map(str, HR_SHAPE)),
                             "--out", str(out), "--overwrite", "--quiet",
                             "--max-memory", budget])
    print(f"| {budget} | {seconds:.1f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
  main()
