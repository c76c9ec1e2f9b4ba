"""jaxsr: arbitrary-scale super-resolution of MR images in JAX/Flax.

`jaxsr.upsample(data, affine, voxel_size=...)` super-resolves arrays with the
general model shipped in the package, or with `checkpoint=` a trained run, and
`adapt=jaxsr.AdaptSettings(steps=300)` first fine-tunes it on the input (see
`jaxsr.dmri.app.upsample`); the `jaxsr` command does the same on NIfTI files.
"""

import importlib.metadata

__version__ = importlib.metadata.version("jaxsr")


def __getattr__(name: str):
  if name == "upsample":  # imported on first use: `import jaxsr` stays light
    from jaxsr.dmri.app.upsample import upsample
    return upsample
  if name == "AdaptSettings":
    from jaxsr.dmri.app.adapt import AdaptSettings
    return AdaptSettings
  raise AttributeError(f"module 'jaxsr' has no attribute {name!r}")
