"""The CSR-dMRI model and train step in PyTorch eager, the reference the benchmarks time JAX against.

The public ArSSR-style code's structure, at jaxsr's shapes and conventions so the
work is the same: a 3D RDN encoder (Conv3d, zero 'SAME' padding) over the LR
input, features sampled trilinearly at HR voxel centres (`grid_sample`,
align_corners=False, border clamping: `jaxsr.dmri.models.sampling`'s convention), the
periodic offset input, an 8 × 256 ReLU MLP that re-injects its input after layer
4, and L1 + 0.01 · mean |FFT(pred − target)|. The LR input is made inside the
step, as jaxsr's step does, by the same anti-aliased cubic resize
(`jax.image.resize` is separable and linear, so it is applied here as one
matrix per axis, taken from jax once per shape).

Needs the `bench` extra (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ResidualDenseBlock(nn.Module):
  def __init__(self, channels: int, growth: int, num_layers: int):
    super().__init__()
    self.convs = nn.ModuleList(nn.Conv3d(channels + c * growth, growth, 3, padding=1)
                               for c in range(num_layers))
    self.fusion = nn.Conv3d(channels + num_layers * growth, channels, 1)

  def forward(self, x):
    features = [x]
    for conv in self.convs:
      features.append(F.relu(conv(torch.cat(features, 1))))
    return x + self.fusion(torch.cat(features, 1))


class RDN3D(nn.Module):
  """`jaxsr.dmri.models.rdn.RDN3D` in PyTorch: (B, C_in, X, Y, Z) -> (B, out_features, X, Y, Z)."""

  def __init__(self, in_channels, num_features=64, growth=64, num_blocks=8, num_layers=3,
               out_features=128):
    super().__init__()
    self.sfe1 = nn.Conv3d(in_channels, num_features, 3, padding=1)
    self.sfe2 = nn.Conv3d(num_features, num_features, 3, padding=1)
    self.blocks = nn.ModuleList(ResidualDenseBlock(num_features, growth, num_layers)
                                for _ in range(num_blocks))
    self.gff_1x1 = nn.Conv3d(num_blocks * num_features, num_features, 1)
    self.gff_3x3 = nn.Conv3d(num_features, num_features, 3, padding=1)
    self.output = nn.Conv3d(num_features, out_features, 3, padding=1)

  def forward(self, x):
    sfe1 = self.sfe1(x)
    h = self.sfe2(sfe1)
    outputs = []
    for block in self.blocks:
      h = block(h)
      outputs.append(h)
    h = self.gff_3x3(self.gff_1x1(torch.cat(outputs, 1)))
    return self.output(h + sfe1)


class ImplicitMLP(nn.Module):
  def __init__(self, in_features, depth=8, width=256, skip_after=4):
    super().__init__()
    sizes = [in_features] + [width] * depth
    sizes_in = [s + (in_features if i == skip_after else 0) for i, s in enumerate(sizes[:-1])]
    self.hidden = nn.ModuleList(nn.Linear(i, width) for i in sizes_in)
    self.head = nn.Linear(width, 1)
    self.skip_after = skip_after

  def forward(self, x):
    h = x
    for i, layer in enumerate(self.hidden):
      h = F.relu(layer(h))
      if i + 1 == self.skip_after:
        h = torch.cat([h, x], -1)
    return self.head(h)


class CSRdMRI(nn.Module):
  """`jaxsr.dmri.models.csr_dmri.CSRdMRI` (periodic position input) in PyTorch."""

  def __init__(self, in_channels=2, num_features=64, growth=64, num_blocks=8, num_layers=3,
               latent_features=128, mlp_depth=8, mlp_width=256, mlp_skip_after=4,
               predict_residual=False):
    super().__init__()
    self.predict_residual = predict_residual
    self.encoder = RDN3D(in_channels, num_features, growth, num_blocks, num_layers,
                         latent_features)
    self.mlp = ImplicitMLP(6 + latent_features + int(predict_residual), mlp_depth, mlp_width,
                           mlp_skip_after)

  @classmethod
  def from_config(cls, m) -> "CSRdMRI":
    """The model of a jaxsr config's `model` section (`configs/csr_dmri.py`)."""
    return cls(m.in_channels, m.num_features, m.growth, m.num_blocks, m.num_layers,
               m.latent_features, m.mlp_depth, m.mlp_width, m.mlp_skip_after,
               m.predict_residual)

  def encode(self, lr):
    """lr (B, C_in, x, y, z) -> latent (B, L, x, y, z); the LR DWI appended with predict_residual."""
    latent = self.encoder(lr)
    return torch.cat([latent, lr[:, :1]], 1) if self.predict_residual else latent

  def decode(self, latent, coords):
    """latent (B, L, x, y, z), coords (B, Q, 3) in [-1, 1] (x, y, z order) -> (B, Q)."""
    grid = coords.flip(-1)[:, :, None, None, :]  # grid_sample wants (z, y, x) for (D, H, W) = (x, y, z)
    features = F.grid_sample(latent, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[:, :, :, 0, 0].transpose(1, 2)
    sizes = torch.tensor(latent.shape[2:], dtype=coords.dtype, device=coords.device)
    index = ((coords + 1) * sizes - 1) / 2
    offset = 2 * (index - torch.round(index))
    position = torch.cat([torch.sin(math.pi * offset), torch.cos(math.pi * offset)], -1)
    intensity = self.mlp(torch.cat([position, features], -1))[..., 0]
    return intensity + features[..., -1] if self.predict_residual else intensity

  def forward(self, lr, coords):
    return self.decode(self.encode(lr), coords)


def count_parameters(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=None)
def resize_matrix(n_in: int, n_out: int, antialias: bool) -> torch.Tensor:
  """(n_out, n_in) matrix of `jax.image.resize(..., method="cubic")` along one axis."""
  eye = np.eye(n_in, dtype=np.float32)
  matrix = jax.image.resize(eye, (n_out, n_in), method="cubic", antialias=antialias)
  return torch.from_numpy(np.array(matrix))


def resize_3d(volumes: torch.Tensor, shape, antialias: bool = True) -> torch.Tensor:
  """Cubic resize of the last three axes of (..., X, Y, Z), as
  `jaxsr.dmri.degradation.degrade.resize_spatial`."""
  for axis, n_out in zip((-3, -2, -1), shape):
    matrix = resize_matrix(volumes.shape[axis], n_out, antialias).to(volumes.device)
    volumes = torch.movedim(torch.tensordot(volumes, matrix, dims=([axis], [1])), -1, axis)
  return volumes


def grid_coordinates(shape) -> torch.Tensor:
  """(X·Y·Z, 3) voxel-centre coordinates in [-1, 1], C order (`jaxsr.dmri.models.sampling`)."""
  axes = [(2 * torch.arange(n, dtype=torch.float32) + 1 - n) / n for n in shape]
  return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def make_train_step(model: CSRdMRI, learning_rate: float, lr_size: int, fft_weight: float,
                    compute_dtype: torch.dtype | None = None):
  """The step of `jaxsr.dmri.step.make_train_step` for implicit models, in PyTorch eager.

  With `compute_dtype` (e.g. torch.bfloat16) the model runs under `torch.autocast`
  in it, with float32 parameters and loss, like jaxsr's `model.dtype`. The step
  runs on the device of the model and the crops.
  """
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

  def train_step(hr: torch.Tensor, t1: torch.Tensor) -> float:
    """hr, t1 (B, M, M, M) -> loss; one Adam update."""
    lr = torch.stack([resize_3d(hr, (lr_size,) * 3), resize_3d(t1, (lr_size,) * 3)], 1)
    coords = grid_coordinates(hr.shape[1:]).to(hr.device).expand(hr.shape[0], -1, -1)
    with torch.autocast(hr.device.type, dtype=compute_dtype, enabled=compute_dtype is not None):
      pred = model(lr, coords).reshape(hr.shape)
    diff = pred.float() - hr
    loss = diff.abs().mean() + fft_weight * torch.fft.fftn(diff, dim=(-3, -2, -1)).abs().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return train_step
