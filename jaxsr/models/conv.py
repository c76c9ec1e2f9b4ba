"""3D 'SAME' convolutions with a per-backend implementation.

XLA's CPU backend runs 3D convolutions (forward and both gradients) far slower
than its 2D ones: at the RDN's layer shapes (batch 9, 10^3 voxels, 64-192 -> 64
channels) 1.6-2x, at the `quick` model's (16-48 -> 16 channels) about 4.5x
(docs/benchmarks.md). The "depth_stacked" form computes the same convolution as
one 2D convolution: the k depth-shifted copies of the zero-padded input are
stacked on the channel axis, the depth axis is folded into the batch, and the
(k, k, k, Cin, Cout) kernel becomes a (k, k, k·Cin, Cout) one over (y, z). Its
gradients are those of a 2D convolution, by automatic differentiation. On GPU
and TPU the native 3D convolution is used; whole-volume inference
(`jaxsr.inference.encode`) uses it everywhere, as the stacked copies cost memory.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

CONV_IMPLS = ("auto", "xla", "depth_stacked")


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
  if resolve_conv_impl(impl) == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  batch, depth, height, width, c_in = x.shape
  r = k // 2
  padded = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0)))
  stacked = jnp.concatenate([padded[:, i:i + depth] for i in range(k)], axis=-1)
  kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(k, k, k * c_in, -1)
  out = jax.lax.conv_general_dilated(stacked.reshape(batch * depth, height, width, k * c_in),
                                     kernel_2d, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out.reshape(batch, depth, height, width, -1)


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
