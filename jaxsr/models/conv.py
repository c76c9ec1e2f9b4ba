"""3D 'SAME' convolutions with a per-backend implementation.

XLA's CPU backend runs 3D convolutions (forward and both gradients) far slower
than its 2D ones: at the RDN's layer shapes (batch 9, 10^3 voxels, 64-192 -> 64
channels) 1.6-2x, at the `quick` model's (16-48 -> 16 channels) about 4.5x
(docs/benchmarks.md). Two forms compute the same convolution with 2D ones, the
depth axis folded into the batch and the (k, k, k, Cin, Cout) kernel split by
depth tap:

  depth_stacked  the k depth-shifted copies of the zero-padded input stacked on
                 the channel axis, one 2D convolution with a (k, k, k·Cin, Cout)
                 kernel over (y, z): the fastest for training (forward and
                 backward, by automatic differentiation), on CPU what "auto" means;
  depth_summed   one 2D convolution per depth tap on the unshifted input, the
                 outputs shifted along depth and summed: no stacked copies, so
                 less memory, and on whole volumes the fastest forward pass on
                 CPU (`jaxsr.inference.forward_conv_impl`).

On GPU and TPU "auto" is the native 3D convolution. Whole-volume inference
(`jaxsr.inference.plan_memory`) uses a 2D form only where the whole volume fits
in one pass with it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

CONV_IMPLS = ("auto", "xla", "depth_stacked", "depth_summed")


def resolve_conv_impl(impl: str) -> str:
  """"auto" -> "depth_stacked" on the CPU backend, "xla" elsewhere; others unchanged."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
  if impl == "auto":
    return "depth_stacked" if jax.default_backend() == "cpu" else "xla"
  return impl


def conv3d_same(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
  """Zero-padded 'SAME' stride-1 convolution, no bias.

  Args:
    x: (B, X, Y, Z, Cin).
    kernel: (k, k, k, Cin, Cout), k odd (flax `nn.Conv`'s layout).
    impl: one of `CONV_IMPLS`; every choice gives the same result up to float rounding.

  Returns:
    (B, X, Y, Z, Cout) in the result dtype of x and kernel.
  """
  k = kernel.shape[0]
  if kernel.shape[:3] != (k, k, k) or k % 2 == 0:
    raise ValueError(f"conv3d_same needs an odd cubic kernel, got shape {kernel.shape}")
  if k == 1:
    return jnp.einsum("bxyzc,co->bxyzo", x, kernel[0, 0, 0])
  impl = resolve_conv_impl(impl)
  if impl == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  batch, depth, height, width, c_in = x.shape
  r = k // 2

  def conv2d(volumes, kernel_2d):  # (B, D', Y, Z, C) -> (B, D', Y, Z, Cout), over (y, z)
    out = jax.lax.conv_general_dilated(volumes.reshape(-1, height, width, volumes.shape[-1]),
                                       kernel_2d, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape(batch, volumes.shape[1], height, width, -1)

  if impl == "depth_summed":
    # Depth tap i adds conv2d(x[d + s]) to output depth d, s = i - r: the 2D convolution
    # of the input depths that exist, padded with zeros at the other end by |s|.
    out = conv2d(x, kernel[r])
    for i in range(k):
      shift = i - r
      if i == r or abs(shift) >= depth:
        continue
      part = conv2d(x[:, max(shift, 0):depth + min(shift, 0)], kernel[i])
      pad = ((0, 0), (max(-shift, 0), max(shift, 0)), (0, 0), (0, 0), (0, 0))
      out = out + jnp.pad(part, pad)
    return out
  padded = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0)))
  stacked = jnp.concatenate([padded[:, i:i + depth] for i in range(k)], axis=-1)
  kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(k, k, k * c_in, -1)
  return conv2d(stacked, kernel_2d)


class Conv3D(nn.Module):
  """A 'SAME' (zero-padded) kernel^3 convolution with bias: (B, X, Y, Z, Cin) -> (B, X, Y, Z, features).

  Parameters are named and initialised like `nn.Conv`'s ("kernel" (k, k, k, Cin,
  features), LeCun normal; "bias" (features,), zeros), so checkpoints of either load
  into the other. They stay float32; the convolution computes in `dtype`.

  Attributes:
    features: output channels.
    kernel_size: k (odd).
    dtype: computation dtype.
    impl: one of `CONV_IMPLS` (see `conv3d_same`).
  """
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    return conv3d_same(x, kernel, self.impl) + bias
