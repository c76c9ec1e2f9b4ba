"""jaxsr: arbitrary-scale super-resolution of MR images in JAX/Flax."""

__version__ = "0.1.0"
