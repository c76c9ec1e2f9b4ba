"""jaxsr's MRSI generator, critic and WGAN-GP train step, written in PyTorch eager for `benchmarks.mrsi_step`.

The same functions as `jaxsr.mrsi.unet.MRSIUNet` (filter-scaling
conditionings), `jaxsr.mrsi.critic.Critic`, `jaxsr.mrsi.loss.mrsi_loss` and
`jaxsr.mrsi.step.make_mrsi_train_step`, as a PyTorch user would write
them: per-sample conditioned kernels as one grouped convolution, the gradient
penalty by `torch.autograd.grad(create_graph=True)`. Tensors are NCHW; maps
(B, H, W). `tests/test_torch_reference.py` loads jaxsr's parameters into these
modules and checks that they compute the same outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jaxsr.metrics import SSIM_K1, SSIM_K2, SSIM_TRUNCATE
from jaxsr.mrsi.loss import MS_SSIM_WEIGHTS, SSIM_SIGMA
from jaxsr.mrsi.unet import EMBEDDING_SIZE


class ConditionMLP(nn.Module):
  """`jaxsr.mrsi.unet.ConditionMLP`: depth - 1 ReLU layers of `width`, a linear one to `out`."""

  def __init__(self, d_in: int, depth: int, width: int, out: int, out_bias: torch.Tensor):
    super().__init__()
    sizes = [d_in] + [width] * (depth - 1)
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    self.out = nn.Linear(sizes[-1], out)
    with torch.no_grad():  # starts at its bias, as jaxsr's zero-initialised last layer
      self.out.weight.zero_()
      self.out.bias.copy_(out_bias)

  def forward(self, condition):
    h = condition
    for layer in self.hidden:
      h = torch.relu(layer(h))
    return self.out(h)


class FilterScaledConv(nn.Module):
  """3 × 3 'SAME' convolution whose (in, out) filters are scaled per sample by an MLP of the condition."""

  def __init__(self, c_in: int, c_out: int, d_condition: int, mlp_depth: int, mlp_width: int):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3) / math.sqrt(9 * c_in))
    self.bias = nn.Parameter(torch.zeros(c_out))
    self.scale = ConditionMLP(d_condition, mlp_depth, mlp_width, c_in * c_out,
                              torch.ones(c_in * c_out))

  def forward(self, x, condition):
    batch, c_in, height, width = x.shape
    c_out = self.weight.shape[0]
    scales = self.scale(condition).reshape(batch, c_in, c_out).transpose(1, 2)
    kernels = self.weight[None] * scales[..., None, None]  # (B, out, in, 3, 3)
    out = F.conv2d(x.reshape(1, batch * c_in, height, width),
                   kernels.reshape(batch * c_out, c_in, 3, 3), padding=1, groups=batch)
    return out.reshape(batch, c_out, height, width) + self.bias[:, None, None]


class ConditionalInstanceNorm(nn.Module):
  """Instance norm with per-channel scale and shift from an MLP of λ."""

  def __init__(self, channels: int, mlp_depth: int = 5, mlp_width: int = 64, epsilon: float = 1e-5):
    super().__init__()
    self.epsilon = epsilon
    self.style = ConditionMLP(1, mlp_depth, mlp_width, 2 * channels,
                              torch.cat([torch.ones(channels), torch.zeros(channels)]))

  def forward(self, x, condition):
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    scale, shift = self.style(condition).chunk(2, dim=-1)
    return ((x - mean) * torch.rsqrt(var + self.epsilon) * scale[..., None, None]
            + shift[..., None, None])


class MCM(nn.Module):
  """FilterScaledConv(n[, m]) -> ConditionalInstanceNorm(λ) -> PReLU."""

  def __init__(self, c_in: int, c_out: int, d_condition: int, conv_mlp: tuple[int, int]):
    super().__init__()
    self.conv = FilterScaledConv(c_in, c_out, d_condition, *conv_mlp)
    self.norm = ConditionalInstanceNorm(c_out)
    self.act = nn.PReLU(init=0.25)

  def forward(self, x, scale_condition, sharpness_condition):
    return self.act(self.norm(self.conv(x, scale_condition), sharpness_condition))


def central_mask(size: int, n: torch.Tensor) -> torch.Tensor:
  """(B, size, size) bool: the kept frequencies |f| < n/2 (`jaxsr.kspace.central_mask`)."""
  f = torch.abs(torch.fft.fftfreq(size) * size)
  half = n.to(torch.float32)[:, None, None] / 2
  return (f[:, None] < half) & (f[None, :] < half)


def truncate(maps: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
  """(B, N, N) maps -> their central n × n k-space, zero-filled (`jaxsr.kspace.truncate`)."""
  spectrum = torch.fft.fft2(maps)
  return torch.fft.ifft2(torch.where(central_mask(maps.shape[-1], n), spectrum, 0)).real


def lr_input(acquired: torch.Tensor, n: torch.Tensor, percentile: float = 99.0,
             min_scale: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
  """(B, N, N) acquired maps -> (LR input over its own scale, the scale) (`mrsi_pipeline.lr_input`)."""
  lr = truncate(acquired, n)
  scale = torch.quantile(lr.flatten(1), percentile / 100, dim=1)
  scale = torch.where(scale > min_scale, scale, torch.ones_like(scale))
  return lr / scale[:, None, None], scale


def data_consistency(output, measured, n):
  """`output` with its central n × n k-space replaced by that of `measured`."""
  spectrum = torch.where(central_mask(output.shape[-1], n), torch.fft.fft2(measured),
                         torch.fft.fft2(output))
  return torch.fft.ifft2(spectrum).real


class MRSIUNet(nn.Module):
  """`jaxsr.mrsi.unet.MRSIUNet` with conditioning "filter_scaling_met" or "filter_scaling"."""

  def __init__(self, channels=(8, 16, 32, 64, 128), conditioning="filter_scaling_met",
               num_metabolites=7):
    super().__init__()
    if conditioning not in ("filter_scaling", "filter_scaling_met"):
      raise ValueError(f"the PyTorch reference has the filter-scaling conditionings only, "
                       f"got {conditioning!r}")
    self.channels = tuple(channels)
    self.with_metabolite = conditioning == "filter_scaling_met"
    conv_mlp = (7, 64) if self.with_metabolite else (5, 32)
    d_condition = 1 + EMBEDDING_SIZE * self.with_metabolite
    self.embedding = nn.Embedding(num_metabolites, EMBEDDING_SIZE) if self.with_metabolite else None
    mcm = lambda c_in, c_out: MCM(c_in, c_out, d_condition, conv_mlp)
    self.encoders = nn.ModuleDict()
    for prefix in ("t1", "flair"):
      levels, c_in = [], 2
      for features in self.channels:
        levels.append(nn.ModuleList([mcm(c_in, features), mcm(features, features)]))
        c_in = features
      self.encoders[prefix] = nn.ModuleList(levels)
    self.up, self.dec = nn.ModuleList(), nn.ModuleList()
    below = 2 * self.channels[-1]
    for level in reversed(range(len(self.channels) - 1)):
      features = self.channels[level]
      self.up.append(mcm(below, features))
      self.dec.append(nn.ModuleList([mcm(3 * features, features), mcm(features, features)]))
      below = features
    self.head = nn.Conv2d(below, 1, 1)
    with torch.no_grad():
      self.head.weight.zero_()
      self.head.bias.zero_()

  def forward(self, lr_map, t1, flair, n, metabolite, sharpness, mask):
    """(B, H, W) maps; (B,) n, metabolite index, λ -> (B, H, W)."""
    scale_condition = (n.to(torch.float32) / 32.0)[:, None]
    if self.with_metabolite:
      scale_condition = torch.cat([scale_condition, self.embedding(metabolite)], -1)
    sharpness_condition = (10.0 * sharpness)[:, None]
    conditions = (scale_condition, sharpness_condition)

    def encode(image, levels):
      h, skips = torch.stack([lr_map, image], 1), []
      for level, mcms in enumerate(levels):
        if level:
          h = F.max_pool2d(h, 2)
        for module in mcms:
          h = module(h, *conditions)
        skips.append(h)
      return skips

    t1_skips, flair_skips = encode(t1, self.encoders["t1"]), encode(flair, self.encoders["flair"])
    h = torch.cat([t1_skips[-1], flair_skips[-1]], 1)
    for up, dec, level in zip(self.up, self.dec, reversed(range(len(self.channels) - 1))):
      h = up(F.interpolate(h, scale_factor=2, mode="nearest"), *conditions)
      h = torch.cat([h, t1_skips[level], flair_skips[level]], 1)
      for module in dec:
        h = module(h, *conditions)
    out = data_consistency(lr_map + self.head(h)[:, 0], lr_map, n)
    return out * mask


class Critic(nn.Module):
  """`jaxsr.mrsi.critic.Critic`: stride-2 3 × 3 convs ('SAME' as XLA pads them) + LeakyReLU, two dense layers."""

  def __init__(self, map_size: int, channels=(16, 32, 64, 128), hidden=64, in_channels=4):
    super().__init__()
    sizes = [in_channels] + list(channels)
    self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2) for a, b in zip(sizes[:-1], sizes[1:]))
    side = map_size
    for _ in channels:
      side = (side + 1) // 2
    self.fc_0 = nn.Linear(side * side * channels[-1], hidden)
    self.fc_1 = nn.Linear(hidden, 1)

  def forward(self, images):
    """(B, 4, H, W) -> (B,) scores."""
    h = images
    for conv in self.convs:
      extra = (h.shape[-1] + 1) % 2  # 'SAME' with stride 2 pads an even side by 1, at the end
      h = F.leaky_relu(conv(F.pad(h, (1 - extra, 1, 1 - extra, 1))), 0.2)
    h = h.permute(0, 2, 3, 1).flatten(1)  # (h, w, c) order, as the NHWC model flattens
    return self.fc_1(F.leaky_relu(self.fc_0(h), 0.2))[:, 0]


def _symmetric_indices(size: int, radius: int) -> torch.Tensor:
  """Indices of numpy's 'symmetric' padding by `radius` (any radius, also beyond `size`)."""
  i = torch.arange(-radius, size + radius) % (2 * size)
  return torch.where(i >= size, 2 * size - 1 - i, i)


def _blur(images):
  """Separable Gaussian (sigma 1.5, 11 taps) of (N, H, W), mirrored borders (`jaxsr.mrsi.loss`)."""
  radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
  taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / SSIM_SIGMA) ** 2)
  taps = taps / taps.sum()
  h, w = images.shape[-2:]
  padded = images[:, _symmetric_indices(h, radius)][:, :, _symmetric_indices(w, radius)]
  out = F.conv2d(padded[:, None], taps.reshape(1, 1, -1, 1))
  return F.conv2d(out, taps.reshape(1, 1, 1, -1))[:, 0]


def ms_ssim(x, y, data_range: float = 1.0):
  """`jaxsr.mrsi.loss.ms_ssim` of (B, H, W) maps -> (B,)."""
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  result = torch.ones(x.shape[0])
  for scale, weight in enumerate(MS_SSIM_WEIGHTS):
    mu_x, mu_y = _blur(x), _blur(y)
    var_x, var_y = _blur(x * x) - mu_x ** 2, _blur(y * y) - mu_y ** 2
    cov = _blur(x * y) - mu_x * mu_y
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    if scale == len(MS_SSIM_WEIGHTS) - 1:
      luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
      value = (luminance * contrast_structure).mean(dim=(-2, -1))
    else:
      value = contrast_structure.mean(dim=(-2, -1))
      x, y = F.avg_pool2d(x[:, None], 2)[:, 0], F.avg_pool2d(y[:, None], 2)[:, 0]
    result = result * torch.clamp(value, min=0.0) ** weight
  return result


def mrsi_loss(pred, target, mask, alpha: float = 0.84):
  """(1 - alpha) L1 + alpha (1 - MS-SSIM) inside the quality mask (`jaxsr.mrsi.loss.mrsi_loss`)."""
  l1 = torch.sum(torch.abs(pred - target) * mask) / torch.clamp(mask.sum(), min=1.0)
  return (1 - alpha) * l1 + alpha * (1 - ms_ssim(pred * mask, target * mask).mean())


def make_train_step(generator: MRSIUNet, critic: Critic, *, learning_rate: float, alpha: float,
                    gp_weight: float, num_critic: int, lambda_max: float,
                    lambda_zero_fraction: float = 0.1):
  """`jaxsr.mrsi.step.make_mrsi_train_step(adversarial=True)` in PyTorch eager.

  Returns step(batch) -> generator loss; batch: "hr", "t1", "flair", "mask" (B, H, W),
  "n" (B,), "metabolite" (B,) int64 tensors. Adam(b1 = 0.5, b2 = 0.9) for both nets.
  """
  g_opt = torch.optim.Adam(generator.parameters(), lr=learning_rate, betas=(0.5, 0.9))
  c_opt = torch.optim.Adam(critic.parameters(), lr=learning_rate, betas=(0.5, 0.9))

  def critic_inputs(batch, lr, maps):
    return torch.stack([batch["t1"], batch["flair"], lr, maps], 1)

  def step(batch) -> float:
    mask = batch["mask"]
    lr, scale = lr_input(batch["hr"], batch["n"])
    hr = batch["hr"] / scale[:, None, None]
    lam = torch.rand(hr.shape[0]) * lambda_max
    lam = torch.where(torch.rand(hr.shape[0]) < lambda_zero_fraction, torch.zeros_like(lam), lam)
    generate = lambda: generator(lr, batch["t1"], batch["flair"], batch["n"],
                                 batch["metabolite"], lam, mask)
    with torch.no_grad():
      fake = critic_inputs(batch, lr, generate())
    real = critic_inputs(batch, lr, hr * mask)
    critic.requires_grad_(True)
    for _ in range(num_critic):
      eps = torch.rand(hr.shape[0], 1, 1, 1)
      mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
      grads, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
      penalty = ((torch.sqrt(grads.pow(2).sum(dim=(1, 2, 3)) + 1e-12) - 1) ** 2).mean()
      loss = critic(fake).mean() - critic(real).mean() + gp_weight * penalty
      c_opt.zero_grad(set_to_none=True)
      loss.backward()
      c_opt.step()
    critic.requires_grad_(False)
    pred = generate()
    loss = (mrsi_loss(pred, hr, mask, alpha)
            + torch.mean(lam * -critic(critic_inputs(batch, lr, pred))))
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    return float(loss.detach())

  return step
