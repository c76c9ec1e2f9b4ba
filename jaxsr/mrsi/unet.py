"""Multi-scale MRSI super-resolution: a multi-encoder UNet conditioned on n, metabolite and λ.

Maps are 2D, (B, H, W) on the high-resolution grid (64 × 64): the network takes
the zero-filled low-resolution metabolite map (`jaxsr.kspace.truncate`)
with the T1 and the FLAIR, and three per-sample conditions:
  n       the acquired matrix size (16 … 32), fed as n / 32;
  m       the metabolite index into `jaxsr.mrsi.phantom.METABOLITES`, embedded in 3 numbers;
  λ       the adversarial weight the output's sharpness is set for, fed as 10 λ.

Every convolution is a Multi-Conditional Module (MCM): a 3 × 3 convolution whose
filters depend on the conditions (`ConditionedConv`, by `conditioning`), then
conditional instance normalisation driven by λ (`ConditionalInstanceNorm`), then
PReLU. Conditionings (the paper's Table 1 rows):
  none            plain convolution (Unconditioned, and Single-scale trained per n);
  amlayer         plain convolution, features scaled and shifted per channel by an MLP of n;
  hypernetwork    every kernel and bias predicted by an MLP of n;
  filter_scaling  a shared kernel, each (in, out) 3 × 3 filter scaled by an MLP of n;
  filter_scaling_met  the same MLP of (n, E(m)).
Conditions differ per sample: the conditioned kernels are batched and the
convolution is vmapped over the batch.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr import kspace

CONDITIONINGS = ("none", "amlayer", "hypernetwork", "filter_scaling", "filter_scaling_met")
EMBEDDING_SIZE = 3  # metabolite embedding E(m)


class ConditionMLP(nn.Module):
  """`depth` fully connected layers: depth - 1 of `width` with ReLU, then a linear one to `out`.

  (B, D) conditions -> (B, out).
  """
  depth: int
  width: int
  out: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, condition: jax.Array) -> jax.Array:
    h = condition
    for i in range(self.depth - 1):
      h = nn.relu(nn.Dense(self.width, name=f"hidden_{i}")(h))
    return nn.Dense(self.out, kernel_init=self.kernel_init, bias_init=self.bias_init,
                    name="out")(h)


def conv_per_sample(x: jax.Array, kernels: jax.Array, bias: jax.Array) -> jax.Array:
  """'SAME' convolution (zero padding) of each sample (B, H, W, Cin) with its own kernel.

  kernels (B, k, k, Cin, Cout) (k odd), bias (B, Cout) -> (B, H, W, Cout). The k²
  shifted copies of the padded input are stacked into (B, H, W, k²·Cin) patches and
  multiplied by each sample's (k²·Cin, Cout) kernel: one batched matmul. This equals
  `lax.conv_general_dilated` per sample; vmapping that convolution over per-sample
  kernels becomes a grouped convolution, which XLA's CPU backend runs far slower
  (forward + backward at the UNet's layer shapes; docs/design.md).
  """
  k = kernels.shape[1]
  r = k // 2
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + height, j:j + width]
                             for i in range(k) for j in range(k)], axis=-1)
  flat = kernels.reshape(kernels.shape[0], -1, kernels.shape[-1])
  return jnp.einsum("bhwk,bko->bhwo", patches, flat) + bias[:, None, None, :]


class ConditionedConv(nn.Module):
  """A 3 × 3 'SAME' convolution (B, H, W, Cin) -> (B, H, W, features) conditioned per sample.

  Attributes:
    features: output channels.
    conditioning: one of `CONDITIONINGS` (see the module docstring).
    mlp_depth, mlp_width: the conditioning MLP (c(n): 5 × 32; c(n, E(m)): 7 × 64).
  """
  features: int
  conditioning: str = "filter_scaling"
  mlp_depth: int = 5
  mlp_width: int = 32
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
    batch, c_in, k = x.shape[0], x.shape[-1], self.kernel_size
    if self.conditioning == "hypernetwork":
      weights = ConditionMLP(self.mlp_depth, self.mlp_width, k * k * c_in * self.features + self.features,
                             name="hyper")(condition)
      kernels = weights[:, :-self.features].reshape(batch, k, k, c_in, self.features)
      kernels = kernels / jnp.sqrt(k * k * c_in)  # unit-variance MLP outputs -> LeCun scale
      return conv_per_sample(x, kernels, weights[:, -self.features:])
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.conditioning.startswith("filter_scaling"):
      # Scales start at 1 (zero last layer, bias 1): at initialisation the plain convolution.
      scales = ConditionMLP(self.mlp_depth, self.mlp_width, c_in * self.features,
                            kernel_init=nn.initializers.zeros, bias_init=nn.initializers.ones,
                            name="scale")(condition)
      kernels = kernel[None] * scales.reshape(batch, 1, 1, c_in, self.features)
      return conv_per_sample(x, kernels, jnp.broadcast_to(bias, (batch, self.features)))
    out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    if self.conditioning == "amlayer":
      # Feature modulation: per-channel scale (from 1) and shift (from 0) from an MLP of n.
      modulation = ConditionMLP(self.mlp_depth, self.mlp_width, 2 * self.features,
                                kernel_init=nn.initializers.zeros, name="modulation")(condition)
      scale, shift = jnp.split(modulation, 2, axis=-1)
      out = out * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    return out


class ConditionalInstanceNorm(nn.Module):
  """Instance normalisation whose per-channel scale and shift come from an MLP of λ (paper Eq. 5).

  (B, H, W, C), (B, D) -> (B, H, W, C): y = s_1:C(λ) (x − μ(x)) / σ(x) + s_C+1:2C(λ),
  μ and σ per sample and channel over H, W. The MLP starts at scale 1, shift 0.
  """
  mlp_depth: int = 5
  mlp_width: int = 64
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    normalised = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    bias_init = lambda key, shape, dtype=jnp.float32: jnp.concatenate(
        [jnp.ones(channels, dtype), jnp.zeros(channels, dtype)])
    style = ConditionMLP(self.mlp_depth, self.mlp_width, 2 * channels,
                         kernel_init=nn.initializers.zeros, bias_init=bias_init,
                         name="style")(condition)
    scale, shift = jnp.split(style, 2, axis=-1)
    return normalised * scale[:, None, None, :] + shift[:, None, None, :]


class MCM(nn.Module):
  """Multi-Conditional Module: ConditionedConv(n[, m]) -> ConditionalInstanceNorm(λ) -> PReLU."""
  features: int
  conditioning: str
  conv_mlp: tuple[int, int]
  norm_mlp: tuple[int, int] = (5, 64)

  @nn.compact
  def __call__(self, x: jax.Array, scale_condition: jax.Array,
               sharpness_condition: jax.Array) -> jax.Array:
    h = ConditionedConv(self.features, self.conditioning, *self.conv_mlp)(x, scale_condition)
    h = ConditionalInstanceNorm(*self.norm_mlp)(h, sharpness_condition)
    return nn.PReLU(negative_slope_init=0.25)(h)


class MRSIUNet(nn.Module):
  """Multi-encoder UNet: (map, T1) and (map, FLAIR) encoders, one decoder, data consistency.

  Each encoder has a level per entry of `channels` (two MCMs per level, 2 × 2 max
  pooling between levels); the decoder upsamples (nearest, then an MCM), joins
  both encoders' features of that level and applies two MCMs; a 1 × 1
  convolution gives the residual added to the input map. The output's measured
  k-space (the central n × n) is then replaced by the input's, and pixels
  outside `mask` are set to 0.

  Attributes:
    channels: feature channels per level (paper: 8, 16, 32, 64, 128).
    conditioning: see `CONDITIONINGS`.
    num_metabolites: size of the metabolite vocabulary of E(m).
    anatomy: False gives both encoders zeros for the T1 and FLAIR (the ablation that
      measures what the anatomy adds; same parameters).
    condition_mlp: (depth, width) of every condition MLP, convolutions' and
      normalisations' alike; () gives the paper's: c(n) 5 × 32, c(n, E(m)) 7 × 64, c(λ)
      5 × 64. Smaller ones only make tiny test networks faster to build and compile.
  """
  channels: Sequence[int] = (8, 16, 32, 64, 128)
  conditioning: str = "filter_scaling_met"
  num_metabolites: int = 7
  anatomy: bool = True
  condition_mlp: tuple[int, ...] = ()

  def _conv_mlp(self) -> tuple[int, int]:
    if self.condition_mlp:
      return tuple(self.condition_mlp)
    return (7, 64) if self.conditioning == "filter_scaling_met" else (5, 32)

  def _norm_mlp(self) -> tuple[int, int]:
    return tuple(self.condition_mlp) or (5, 64)

  @nn.compact
  def __call__(self, lr_map: jax.Array, t1: jax.Array, flair: jax.Array, n: jax.Array,
               metabolite: jax.Array, sharpness: jax.Array, mask: jax.Array | None = None,
               n_condition: jax.Array | None = None) -> jax.Array:
    """(B, H, W) zero-filled LR maps, T1, FLAIR; (B,) n, metabolite index, λ -> (B, H, W).

    `n` is the acquired matrix size: data consistency keeps its central n × n
    k-space, and by default the convolutions are conditioned on it;
    `n_condition` conditions them on another n instead (the condition studies).
    H and W must be divisible by 2^(levels - 1).
    """
    n = jnp.asarray(n, jnp.float32)
    n_condition = n if n_condition is None else jnp.asarray(n_condition, jnp.float32)
    scale_condition = (n_condition / 32.0)[:, None]
    if self.conditioning == "filter_scaling_met":
      embedding = nn.Embed(self.num_metabolites, EMBEDDING_SIZE, name="metabolite_embedding")
      scale_condition = jnp.concatenate([scale_condition, embedding(metabolite)], axis=-1)
    sharpness_condition = (10.0 * jnp.asarray(sharpness, jnp.float32))[:, None]
    mcm = lambda features, name: MCM(features, self.conditioning, self._conv_mlp(),
                                     self._norm_mlp(), name=name)

    def encoder(image, prefix):
      h, skips = jnp.stack([lr_map, image], axis=-1), []
      for level, features in enumerate(self.channels):
        if level:
          h = nn.max_pool(h, (2, 2), strides=(2, 2))
        for i in range(2):
          h = mcm(features, f"{prefix}_{level}_{i}")(h, scale_condition, sharpness_condition)
        skips.append(h)
      return skips

    if not self.anatomy:
      t1, flair = jnp.zeros_like(lr_map), jnp.zeros_like(lr_map)
    t1_skips, flair_skips = encoder(t1, "t1"), encoder(flair, "flair")
    h = jnp.concatenate([t1_skips[-1], flair_skips[-1]], axis=-1)
    for level in reversed(range(len(self.channels) - 1)):
      features = self.channels[level]
      h = jax.image.resize(h, (h.shape[0], h.shape[1] * 2, h.shape[2] * 2, h.shape[3]), "nearest")
      h = mcm(features, f"up_{level}")(h, scale_condition, sharpness_condition)
      h = jnp.concatenate([h, t1_skips[level], flair_skips[level]], axis=-1)
      for i in range(2):
        h = mcm(features, f"dec_{level}_{i}")(h, scale_condition, sharpness_condition)
    # Zero-initialised head: training starts from the zero-filled input (k-space zero-filling).
    residual = nn.Conv(1, (1, 1), kernel_init=nn.initializers.zeros, name="head")(h)[..., 0]
    out = kspace.data_consistency(lr_map + residual, lr_map, n)
    return out if mask is None else out * mask
