"""The MRSI command of `jaxsr`: `upsample-mrsi` (a metabolite map onto the network's grid)."""

from __future__ import annotations

import argparse
import textwrap

from jaxsr.mrsi.phantom import METABOLITES
from jaxsr.mrsi.upsample import upsample_mrsi_files


def add_commands(commands) -> dict:
  """Adds `upsample-mrsi` to the `jaxsr` subparsers; returns {name: handler}."""
  mr = commands.add_parser(
      "upsample-mrsi", help="super-resolve an MRSI metabolite map with a trained MRSI network",
      description=textwrap.fill(
          "Super-resolves a metabolite map (3D NIfTI: the acquired n × n matrix, n even, and its "
          "slices) onto the network's 64 × 64 in-plane grid over the same field of view, "
          "guided by a T1 and a FLAIR, at an adjustable sharpness. MRSI maps are Fourier "
          "reconstructions: the output is the map's k-space zero-filled to 64 × 64 and completed "
          "by the network, keeping the measured k-space; voxel (0, 0) stays in place and the "
          "in-plane voxel size becomes n/64 of the input's. NaN/inf voxels of the map count as "
          "rejected by quality filtering, and the output is 0 there.", 79),
      epilog="Example:\n  jaxsr upsample-mrsi --checkpoint runs/mrsi/fold0/sharpness_"
      "filter_scaling_met --map naa.nii.gz --t1 t1.nii.gz --flair flair.nii.gz --metabolite "
      "NAA --sharpness 0.03 --out naa_sr.nii.gz",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  mr.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                  help="run directory of a trained MRSI network (train.py --config "
                  "configs/mrsi.py; e.g. DIR/fold0/filter_scaling_met)")
  mr.add_argument("--map", required=True, metavar="FILE",
                  help="metabolite map NIfTI, n × n × slices (any units, e.g. mM or ratios)")
  mr.add_argument("--t1", required=True, metavar="FILE",
                  help="T1-weighted NIfTI co-registered with the map, any resolution; resampled "
                  "through the affines")
  mr.add_argument("--flair", required=True, metavar="FILE",
                  help="FLAIR NIfTI co-registered with the map, any resolution")
  mr.add_argument("--metabolite", required=True, metavar="NAME",
                  help=f"the map's metabolite: one of {', '.join(METABOLITES)} (Cho, Cr, mI "
                  "also accepted); sets the metabolite-aware filters")
  mr.add_argument("--sharpness", type=float, default=0.0, metavar="LAMBDA",
                  help="adversarial weight λ the output is made for: 0 (default) is the most "
                  "faithful, larger is sharper; up to the λ_max the network was trained with "
                  "(0.1), about 0.03 recommended; networks trained without the adversarial "
                  "loss take 0 only")
  mr.add_argument("--mask", metavar="FILE",
                  help="quality mask NIfTI (non-zero = keep; on the map grid, or resampled onto "
                  "it by nearest neighbour): the output is 0 where the map is rejected")
  mr.add_argument("--out", required=True, metavar="FILE",
                  help="output NIfTI (.nii or .nii.gz), 64 × 64 × slices, float32, in the map's "
                  "units")
  mr.add_argument("--overwrite", action="store_true",
                  help="replace an existing output file (refused otherwise)")
  return {"upsample-mrsi": _upsample_mrsi}


def _upsample_mrsi(args: argparse.Namespace) -> str:
  result = upsample_mrsi_files(args.checkpoint, args.map, args.out, t1=args.t1, flair=args.flair,
                               metabolite=args.metabolite, sharpness=args.sharpness,
                               mask=args.mask, overwrite=args.overwrite)
  return (f"wrote {result.path}: {'×'.join(map(str, result.shape))} voxels from an "
          f"{result.n}×{result.n} matrix ({result.size / result.n:.3g}× in-plane) at λ = "
          f"{args.sharpness:g} in {result.seconds:.1f} s")
