"""3D 'SAME' convolutions with a per-backend implementation.

XLA's CPU backend runs 3D convolutions (forward and both gradients) far slower
than its 2D ones (docs/benchmarks.md). On CPU ("auto") each 3D convolution is
therefore computed with 2D ones over (y, z), the depth axis folded into the
batch (`depth_taps`): one 2D convolution whose k·Cout output channels are the
kernel's k depth taps, each tap's outputs shifted along depth and summed. Its
input gradient is the same form on the output gradient with the flipped,
transposed kernel (a custom VJP), its kernel gradient that of the 2D convolution.
On GPU and TPU "auto" is the native 3D convolution.

XLA:CPU runs 2D convolutions either with YNNPACK (its default) or with its own
Eigen kernels: YNNPACK's are the faster in train steps (forward and backward of
training patches), Eigen's in forward passes over whole volumes, where they are
also free of YNNPACK's work buffers, memory outside what XLA reports for the
program. `forward_compiler_options` selects the Eigen kernels for inference
programs (`jaxsr.dmri.inference.reconstruct`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

CONV_IMPLS = ("auto", "xla", "depth_taps")

# Library fusions for XLA:CPU: YNNPACK for dot products only, so convolutions use Eigen.
_EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def resolve_conv_impl(impl: str) -> str:
  """"auto" -> "depth_taps" on the CPU backend, "xla" elsewhere; others unchanged."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
  if impl == "auto":
    return "depth_taps" if jax.default_backend() == "cpu" else "xla"
  return impl


@functools.cache
def _forward_compiler_options() -> tuple[tuple[str, str], ...]:
  if jax.default_backend() != "cpu":
    return ()
  try:  # the option and its value exist in the jaxlib releases this project measured
    jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile(compiler_options=_EIGEN_CONVOLUTIONS)
  except jax.errors.JaxRuntimeError:
    return ()
  return tuple(_EIGEN_CONVOLUTIONS.items())


def forward_compiler_options() -> dict[str, str]:
  """XLA compiler options for forward-only programs over whole volumes or large tiles.

  On CPU, 2D convolutions by XLA's Eigen kernels instead of YNNPACK, dot products
  still by YNNPACK: over whole volumes they are faster and need no work buffers outside
  what XLA reports (docs/benchmarks.md). Train steps keep XLA's default, the faster
  there. Empty elsewhere, or where the installed jaxlib lacks the option.
  """
  return dict(_forward_compiler_options())


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
  return _depth_taps_conv(x, kernel)


def _conv2d_over_depth(x: jax.Array, kernel_2d: jax.Array) -> jax.Array:
  """(B, D, Y, Z, C), (k, k, C, C') -> (B, D, Y, Z, C'): a 'SAME' 2D convolution over (y, z)."""
  batch, depth, height, width, c_in = x.shape
  out = jax.lax.conv_general_dilated(x.reshape(-1, height, width, c_in), kernel_2d, (1, 1),
                                     "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out.reshape(batch, depth, height, width, -1)


def _depth_taps_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv3d_same` as one 2D convolution with the k depth taps as output channels.

  Tap i (depth offset s = i - k//2) adds its 2D convolution of input depth d + s
  to output depth d: the taps' outputs, zero-padded along depth, are summed
  with shifts. (B, X, Y, Z, Cin), (k, k, k, Cin, Cout) -> (B, X, Y, Z, Cout).
  """
  depth, c_in = x.shape[1], x.shape[-1]
  k, c_out = kernel.shape[0], kernel.shape[-1]
  r = k // 2
  kernel_2d = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(k, k, c_in, k * c_out)
  taps = jnp.pad(_conv2d_over_depth(x, kernel_2d), ((0, 0), (r, r), (0, 0), (0, 0), (0, 0)))
  return sum(taps[:, i:i + depth, ..., i * c_out:(i + 1) * c_out] for i in range(k))


@jax.custom_vjp
def _depth_taps_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _depth_taps_forward(x, kernel)


def _depth_taps_conv_fwd(x, kernel):
  return _depth_taps_forward(x, kernel), (x, kernel)


def _depth_taps_conv_bwd(residuals, grad):
  x, kernel = residuals
  # A 'SAME' convolution's input gradient: the convolution of the output gradient
  # with the kernel flipped in space and its channel axes swapped.
  transposed = jnp.flip(kernel, (0, 1, 2)).transpose(0, 1, 2, 4, 3)
  grad_x = _depth_taps_forward(grad, transposed)
  grad_kernel = jax.vjp(lambda w: _depth_taps_forward(x, w), kernel)[1](grad)[0]
  return grad_x, grad_kernel


_depth_taps_conv.defvjp(_depth_taps_conv_fwd, _depth_taps_conv_bwd)


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
