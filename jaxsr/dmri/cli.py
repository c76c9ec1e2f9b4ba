"""The dMRI commands of `jaxsr`: `upsample` (any voxel size, NIfTI in and out), `bids` (a BIDS
App over a dataset's DWI) and `export`."""

from __future__ import annotations

import argparse
import re
import textwrap

from jaxsr.dmri.app.adapt import AdaptSettings
from jaxsr.dmri.app.bids_app import ANALYSIS_LEVELS, run_bids_app
from jaxsr.dmri.app.pretrained import export_run
from jaxsr.dmri.app.settings import (DEFAULT_BACK_PROJECTION, DEFAULT_MAX_MEMORY,
                                     DEFAULT_MAX_OUTPUT_VOXELS, DEFAULT_PSF)
from jaxsr.dmri.app.upsample_files import upsample_files
from jaxsr.dmri.degradation.psf import PSFS
from jaxsr.dmri.inference.memory import format_bytes


def parse_size(text: str) -> int:
  """Bytes from '4G', '512M', '1.5GiB', '2e9' (K/M/G/T are powers of 1024)."""
  match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*",
                       str(text))
  if not match:
    raise ValueError(f"not a memory size: {text!r} (e.g. 4G, 512M)")
  value = float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " ")
  if not value > 0:
    raise ValueError(f"memory size must be positive, got {text!r}")
  return int(value)


def _numbers(kind: type, name: str):
  """An argparse type: one number or three comma-separated ones (x, y, z)."""

  def parse(text: str):
    parts = [p for p in text.replace(" ", "").split(",")]
    if len(parts) not in (1, 3):
      raise argparse.ArgumentTypeError(f"{name} takes one number or three (x,y,z), got {text!r}")
    try:
      values = [kind(p) for p in parts]
    except ValueError:
      raise argparse.ArgumentTypeError(f"{name}: not {'integers' if kind is int else 'numbers'}: "
                                       f"{text!r}") from None
    return values[0] if len(values) == 1 else tuple(values)
  return parse


def _size(text: str) -> int:
  try:
    return parse_size(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(commands) -> dict:
  """Adds `upsample`, `bids` and `export` to the `jaxsr` subparsers; returns {name: handler}."""
  _add_upsample(commands)
  _add_bids(commands)
  _add_export(commands)
  return {"upsample": _upsample, "bids": _bids, "export": _export}


def _add_upsample(commands) -> None:
  up = commands.add_parser(
      "upsample", help="super-resolve a 3D volume or a 4D DWI series to any voxel size",
      description=textwrap.fill(
          "Super-resolves a NIfTI volume (3D, or 4D DWI with every volume done) onto a finer "
          "grid over the same field of view with a trained arbitrary-scale model: the general "
          "model shipped with jaxsr unless --checkpoint names another, optionally adapted to "
          "the input first (--adapt). The output "
          "affine keeps the input's orientation (oblique included), scales the voxel axes and "
          "shifts the origin to the new voxel centres; qform/sform codes and units are kept, so "
          "the result lines up with the input in world coordinates.", 79),
      epilog="Give exactly one of --voxel-size, --scale and --shape. Examples:\n"
      "  jaxsr upsample --input t1.nii.gz --scale 2 --out t1_sr.nii.gz --adapt 300\n"
      "  jaxsr upsample --checkpoint runs/arssr --dwi b0.nii.gz --voxel-size 1 --out b0_1mm.nii.gz\n"
      "  jaxsr upsample --checkpoint runs/csr --dwi dwi.nii.gz --bvals dwi.bval --bvecs dwi.bvec "
      "--t1 T1w.nii.gz --mask mask.nii.gz --scale 2 --out dwi_sr.nii.gz --preview sr.png\n"
      "  jaxsr upsample --input b0.nii.gz --voxel-size 2 --out b0_2mm.nii.gz --report b0_2mm.html "
      "--uncertainty b0_2mm_unc.nii.gz",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  up.add_argument("--checkpoint", metavar="RUN_DIR",
                  help="run directory of a trained arbitrary-scale model (train.py --workdir; "
                  "its latest checkpoint is used) or a folder written by --save-adapted; "
                  "default: the general model shipped with jaxsr (configs/general.py)")
  up.add_argument("--input", "--dwi", dest="dwi", required=True, metavar="FILE",
                  help="input NIfTI (.nii/.nii.gz): a 3D volume or a 4D DWI series, any voxel "
                  "size and orientation")
  up.add_argument("--t1", metavar="FILE",
                  help="T1-weighted NIfTI at its own resolution and orientation; resampled "
                  "through the affines. Required by models trained with a T1, refused by "
                  "models trained without")
  up.add_argument("--bvals", metavar="FILE",
                  help="FSL b-values (s/mm²) of a 4D DWI: diffusion-weighted volumes are "
                  "divided by the mean b0 as in training and written back in signal units; "
                  "copied beside the output as OUT.bval")
  up.add_argument("--bvecs", metavar="FILE",
                  help="FSL b-vectors (3 x V), with --bvals; copied beside the output as "
                  "OUT.bvec (still valid: the output keeps the voxel axes' orientation)")
  up.add_argument("--mask", metavar="FILE",
                  help="brain mask NIfTI (on the input grid, or resampled onto it by nearest "
                  "neighbour): intensities are normalised inside it and the output is 0 "
                  "outside it")
  grid = up.add_mutually_exclusive_group(required=True)
  grid.add_argument("--voxel-size", type=_numbers(float, "--voxel-size"), metavar="MM",
                    help="output voxel size in mm: 1.25, or per axis 1,1,1.5 (rounded to whole "
                    "voxels over the input's field of view)")
  grid.add_argument("--scale", type=_numbers(float, "--scale"), metavar="S",
                    help="upsampling factor, >= 1: 2.4, or per axis 2,2,1.5")
  grid.add_argument("--shape", type=_numbers(int, "--shape"), metavar="X,Y,Z",
                    help="output voxel counts per axis, e.g. 145,174,145")
  up.add_argument("--out", required=True, metavar="FILE",
                  help="output NIfTI (.nii or .nii.gz), float32, in the input's units")
  up.add_argument("--max-memory", type=_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                  help="memory budget for the whole process, e.g. 4G or 512M (default "
                  f"{format_bytes(DEFAULT_MAX_MEMORY)}): the encoder runs over overlapping "
                  "tiles and the decoder over chunks of output voxels sized to fit")
  up.add_argument("--max-output-voxels", type=int, default=DEFAULT_MAX_OUTPUT_VOXELS,
                  metavar="N", help="refuse output grids of more voxels per 3D volume "
                  f"(default {DEFAULT_MAX_OUTPUT_VOXELS:,})")
  up.add_argument("--psf", metavar="NAME", default=DEFAULT_PSF,
                  help="the input's point-spread function: 'auto' (default: per axis, k-space "
                  "truncation or a smooth cubic profile, decided from the grid's in-plane and "
                  "through-plane axes and the scan itself, and written to OUT.json), or one of "
                  f"{', '.join(PSFS)} for every axis or three as X,Y,Z, e.g. kspace,kspace,block "
                  "(block: thick slices / block averaging; gaussian: a smooth slice profile; "
                  "kspace: a smaller k-space matrix). Back-projection and --adapt degrade with it "
                  "(with 'auto', decided on the model's output before adapting)")
  up.add_argument("--back-projection", type=int, default=DEFAULT_BACK_PROJECTION, metavar="N",
                  help="iterations of back-projection onto the input: the output is corrected "
                  "until downsampling it with --psf gives back the input (exactly along "
                  "k-space axes); 0 keeps the model's raw output (default "
                  f"{DEFAULT_BACK_PROJECTION})")
  up.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                  help="first fine-tune the model on the input itself for STEPS steps "
                  "(self-supervised: the input degraded once more by the requested factors is "
                  "restored to the input), then apply it; DWI-only models; 100-300 steps take "
                  "about a minute on a laptop. It is used only where checks on the input say it "
                  "helps: adapting one scale down must restore the input better (an input too "
                  "small for this check is not adapted), and so must the adapted model on a "
                  "held-out part of the input, whose loss also stops training early, and its "
                  "output must reproduce the input at least as well as the model's; else the "
                  "model is used as it was (one line and OUT.json say which) (default 0: off)")
  up.add_argument("--save-adapted", metavar="DIR",
                  help="with --adapt, also save the adapted model to DIR (reuse it with "
                  "--checkpoint DIR)")
  up.add_argument("--preview", metavar="PNG",
                  help="also write a PNG montage of axial, sagittal and coronal slices of the "
                  "first volume, input above output")
  up.add_argument("--uncertainty", metavar="FILE",
                  help="also write a NIfTI (.nii/.nii.gz) of the output's shape holding each "
                  "voxel's uncertainty: the expected absolute error of the output, in its "
                  "units (the spread of the output over plausible point-spread functions plus "
                  "the detail above the input's band, calibrated on real validation scans: "
                  "docs/uncertainty.md)")
  up.add_argument("--report", metavar="HTML",
                  help="also write a self-contained HTML report: the run (files, grids, model, "
                  "settings, PSF, time per stage), three planes of the input, tricubic, the "
                  "output, their difference and the uncertainty, and with --adapt its checks "
                  "and curve")
  up.add_argument("--overwrite", action="store_true",
                  help="replace existing output files (refused otherwise)")
  up.add_argument("--quiet", action="store_true",
                  help="do not show the progress bar over volumes, encoder tiles and chunks")


def _add_bids(commands) -> None:
  app = commands.add_parser(
      "bids", help="super-resolve the DWI of a BIDS dataset into a derivative dataset (BIDS App)",
      description=textwrap.fill(
          "A BIDS App: super-resolves every DWI scan (sub-*/[ses-*/]dwi/*_dwi.nii.gz with its "
          ".bval/.bvec) of the participants asked for, as `jaxsr upsample` does, and writes "
          "the derivative dataset OUT_DIR: dataset_description.json (GeneratedBy jaxsr) and "
          "sub-<label>/[ses-<label>/]dwi/<name>_res-<mm>_desc-jaxsr_dwi.nii.gz with its "
          ".bval, .bvec and a JSON sidecar (model, weights' SHA-256, jaxsr version, grid, "
          "input file, seconds). Models that take a T1 get the participant's T1w.", 79),
      epilog="Example:\n  jaxsr bids /data/ds001 /data/ds001/derivatives/jaxsr participant "
      "--participant-label 01 02 --voxel-size 1.25",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  app.add_argument("bids_dir", metavar="BIDS_DIR", help="the raw BIDS dataset")
  app.add_argument("out_dir", metavar="OUT_DIR",
                   help="the derivative dataset to write (created; e.g. "
                   "BIDS_DIR/derivatives/jaxsr)")
  app.add_argument("analysis_level", choices=ANALYSIS_LEVELS,
                   help="participant: each scan on its own (there is no group level)")
  app.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="the participants to process, with or without sub- (default: all)")
  app.add_argument("--checkpoint", metavar="RUN_DIR",
                   help="as for `jaxsr upsample` (default: the shipped general model)")
  grid = app.add_mutually_exclusive_group(required=True)
  grid.add_argument("--voxel-size", type=_numbers(float, "--voxel-size"), metavar="MM",
                    help="output voxel size in mm: 1.25, or per axis 1,1,1.5")
  grid.add_argument("--scale", type=_numbers(float, "--scale"), metavar="S",
                    help="upsampling factor, >= 1: 2, or per axis 1,1,2")
  app.add_argument("--max-memory", type=_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                   help=f"memory budget as for `jaxsr upsample` (default "
                   f"{format_bytes(DEFAULT_MAX_MEMORY)})")
  app.add_argument("--back-projection", type=int, default=DEFAULT_BACK_PROJECTION, metavar="N",
                   help=f"as for `jaxsr upsample` (default {DEFAULT_BACK_PROJECTION})")
  app.add_argument("--psf", metavar="NAME", default=DEFAULT_PSF,
                   help=f"as for `jaxsr upsample`: auto (default), {', '.join(PSFS)} or X,Y,Z")
  app.add_argument("--overwrite", action="store_true", help="replace existing derivatives")
  app.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_export(commands) -> None:
  ex = commands.add_parser(
      "export", help="export a trained model to a small folder that --checkpoint takes",
      description="Writes one checkpoint of a training run as params.msgpack, config.json, "
      "manifest.json (with the parameters' SHA-256) and run.json: the format of the shipped "
      "model (jaxsr.dmri.app.pretrained), without the optimizer state.")
  ex.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="train.py --workdir")
  ex.add_argument("--step", type=int, metavar="N", help="the checkpoint (default: the latest)")
  ex.add_argument("--out", required=True, metavar="DIR", help="output folder")


def _upsample(args: argparse.Namespace) -> str:
  adapt = AdaptSettings(steps=args.adapt) if args.adapt else None
  result = upsample_files(
      args.checkpoint, args.dwi, args.out, t1=args.t1, bvals=args.bvals, bvecs=args.bvecs,
      mask=args.mask, voxel_size=args.voxel_size, scale=args.scale, shape=args.shape,
      max_memory=args.max_memory, max_output_voxels=args.max_output_voxels,
      back_projection=args.back_projection, psf=args.psf, adapt=adapt,
      save_adapted=args.save_adapted, preview=args.preview, uncertainty=args.uncertainty,
      report=args.report, overwrite=args.overwrite, progress=not args.quiet)
  voxel = "×".join(f"{v:.4g}" for v in result.grid.voxel_size)
  plan = result.plan
  adapted = (result.decided["adapt"]["message"] + "\n") if "adapt" in result.decided else ""
  notes = "".join(note + "\n" for note in result.notes)
  return (f"{notes}{adapted}wrote {', '.join(result.files)}: {result.num_volumes} volume(s) of "
          f"{'×'.join(map(str, result.grid.shape))} voxels of {voxel} mm "
          f"in {result.seconds:.1f} s (encoder tiles of {'×'.join(map(str, plan.tile))} input "
          f"voxels with the {plan.conv_impl} convolution, decoder chunks of "
          f"{plan.chunk_size:,} output voxels, estimated peak "
          f"{format_bytes(plan.peak_bytes)} of {format_bytes(args.max_memory)})")


def _bids(args: argparse.Namespace) -> str:
  results = run_bids_app(
      args.bids_dir, args.out_dir, args.analysis_level,
      participant_labels=args.participant_label, checkpoint=args.checkpoint,
      voxel_size=args.voxel_size, scale=args.scale, overwrite=args.overwrite,
      progress=not args.quiet, max_memory=args.max_memory, back_projection=args.back_projection,
      psf=args.psf)
  seconds = sum(r.seconds for r in results)
  return (f"wrote {len(results)} derivative scan(s) to {args.out_dir} in {seconds:.1f} s: "
          + ", ".join(r.files[0] for r in results))


def _export(args: argparse.Namespace) -> str:
  folder = export_run(args.checkpoint, args.out, args.step)
  return f"wrote {folder}"
