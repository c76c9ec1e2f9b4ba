"""Diffusion MRI super-resolution (CSR-dMRI and its baselines)."""
