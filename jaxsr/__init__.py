"""jaxsr: arbitrary-scale super-resolution of MR images in JAX/Flax.

`jaxsr.upsample(data, affine, checkpoint, voxel_size=...)` super-resolves arrays
with a trained model (see `jaxsr.upsampling`); the `jaxsr` command does the same
on NIfTI files.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  if name == "upsample":  # imported on first use: `import jaxsr` stays light
    from jaxsr.upsampling import upsample
    return upsample
  raise AttributeError(f"module 'jaxsr' has no attribute {name!r}")
