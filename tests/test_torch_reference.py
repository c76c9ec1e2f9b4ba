"""The benchmarks' PyTorch models compute jaxsr's CSR-dMRI and MRSI functions (torch: the `test` extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the test extra installs it: these tests must run, never be skipped

from benchmarks import torch_reference  # noqa: E402
from jaxsr.dmri.degradation.degrade import degrade  # noqa: E402
from jaxsr.dmri.models import CSRdMRI, init_params  # noqa: E402

TINY = dict(num_features=4, growth=3, num_blocks=2, num_layers=2, latent_features=5,
            mlp_depth=4, mlp_width=8, mlp_skip_after=2)


def load_jax_params(module, params):
  """Copies flax parameters into the PyTorch model (conv kernels DHWIO -> OIDHW, dense (in, out) -> (out, in))."""
  enc, mlp = params["encoder"], params["mlp"]
  convs = [(module.encoder.sfe1, enc["sfe1"]), (module.encoder.sfe2, enc["sfe2"]),
           (module.encoder.gff_1x1, enc["gff_1x1"]), (module.encoder.gff_3x3, enc["gff_3x3"]),
           (module.encoder.output, enc["output"])]
  for i, block in enumerate(module.encoder.blocks):
    convs += [(conv, enc[f"rdb_{i}"][f"Conv_{c}"]) for c, conv in enumerate(block.convs)]
    convs.append((block.fusion, enc[f"rdb_{i}"]["local_fusion"]))
  dense = [(layer, mlp[f"hidden_{i}"]) for i, layer in enumerate(module.mlp.hidden)]
  dense.append((module.mlp.head, mlp["head"]))
  with torch.no_grad():
    for layer, p in convs:
      layer.weight.copy_(torch.from_numpy(np.array(p["kernel"]).transpose(4, 3, 0, 1, 2)))
      layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    for layer, p in dense:
      layer.weight.copy_(torch.from_numpy(np.array(p["kernel"]).T))
      layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))


@pytest.mark.parametrize("predict_residual", [False, True])
def test_same_parameters_give_the_same_intensities_at_any_coordinate(predict_residual):
  model = CSRdMRI(**TINY, predict_residual=predict_residual)
  params = init_params(model, jax.random.key(0, impl="rbg"), in_channels=2, lr_shape=(5, 4, 6))
  params = jax.tree.map(lambda p: p + 0.1 * jnp.sign(p + 0.5), params)  # non-zero biases too
  reference = torch_reference.CSRdMRI(2, **TINY, predict_residual=predict_residual)
  assert torch_reference.count_parameters(reference) == sum(
      p.size for p in jax.tree.leaves(params))
  load_jax_params(reference, params)
  rng = np.random.default_rng(0)
  lr = rng.standard_normal((2, 5, 4, 6, 2)).astype(np.float32)
  coords = rng.uniform(-1.1, 1.1, (2, 50, 3)).astype(np.float32)  # beyond the edges too
  expected = model.apply({"params": params}, jnp.asarray(lr), jnp.asarray(coords))
  with torch.no_grad():
    got = reference(torch.from_numpy(lr).permute(0, 4, 1, 2, 3), torch.from_numpy(coords))
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_the_reference_degradation_is_jaxsrs():
  volumes = np.random.default_rng(1).random((2, 12, 10, 11)).astype(np.float32)
  got = torch_reference.resize_3d(torch.from_numpy(volumes), (5, 4, 4)).numpy()
  np.testing.assert_allclose(got, degrade(jnp.asarray(volumes), (5, 4, 4)), rtol=1e-4, atol=1e-5)


def load_mrsi_params(generator, critic, g_params, c_params):
  """Copies the flax MRSI generator and critic parameters into the PyTorch reference."""
  t = lambda a: torch.from_numpy(np.array(a))

  def mlp(module, p):
    for i, layer in enumerate(module.hidden):
      layer.weight.copy_(t(p[f"hidden_{i}"]["kernel"]).T)
      layer.bias.copy_(t(p[f"hidden_{i}"]["bias"]))
    module.out.weight.copy_(t(p["out"]["kernel"]).T)
    module.out.bias.copy_(t(p["out"]["bias"]))

  def mcm(module, p):
    conv = p["ConditionedConv_0"]
    module.conv.weight.copy_(t(conv["kernel"]).permute(3, 2, 0, 1))
    module.conv.bias.copy_(t(conv["bias"]))
    mlp(module.conv.scale, conv["scale"])
    mlp(module.norm.style, p["ConditionalInstanceNorm_0"]["style"])
    module.act.weight.fill_(float(p["PReLU_0"]["negative_slope"]))

  levels = len(generator.channels)
  with torch.no_grad():
    for prefix in ("t1", "flair"):
      for level in range(levels):
        for i in range(2):
          mcm(generator.encoders[prefix][level][i], g_params[f"{prefix}_{level}_{i}"])
    for k, level in enumerate(reversed(range(levels - 1))):
      mcm(generator.up[k], g_params[f"up_{level}"])
      for i in range(2):
        mcm(generator.dec[k][i], g_params[f"dec_{level}_{i}"])
    generator.head.weight.copy_(t(g_params["head"]["kernel"]).permute(3, 2, 0, 1))
    generator.head.bias.copy_(t(g_params["head"]["bias"]))
    if generator.embedding is not None:
      generator.embedding.weight.copy_(t(g_params["metabolite_embedding"]["embedding"]))
    for i, conv in enumerate(critic.convs):
      conv.weight.copy_(t(c_params[f"conv_{i}"]["kernel"]).permute(3, 2, 0, 1))
      conv.bias.copy_(t(c_params[f"conv_{i}"]["bias"]))
    for name in ("fc_0", "fc_1"):
      getattr(critic, name).weight.copy_(t(c_params[name]["kernel"]).T)
      getattr(critic, name).bias.copy_(t(c_params[name]["bias"]))


@pytest.mark.parametrize("conditioning", ["filter_scaling_met", "filter_scaling"])
def test_the_mrsi_reference_computes_jaxsrs_generator_critic_and_loss(conditioning):
  from benchmarks import torch_mrsi_reference as ref
  from jaxsr.mrsi import loss as losses
  from jaxsr.mrsi import pipeline as mrsi_pipeline
  from jaxsr.mrsi import step as mrsi_step
  from jaxsr.mrsi.critic import Critic
  from jaxsr.mrsi.unet import MRSIUNet
  channels, size, batch = (4, 6), 16, 3
  generator, critic = MRSIUNet(channels, conditioning), Critic((4, 8), hidden=8)
  state = mrsi_step.create_gan_state(generator, critic, jax.random.key(0, impl="rbg"), (size, size))
  rng = np.random.default_rng(0)
  # Perturb every parameter so the zero-initialised last layers and the head matter too.
  perturb = lambda p: jax.tree.map(
      lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(np.float32), p)
  g_params, c_params = perturb(state.generator.params), perturb(state.critic.params)
  maps = {k: rng.random((batch, size, size), dtype=np.float32) for k in ("hr", "t1", "flair")}
  mask = (rng.random((batch, size, size)) > 0.2).astype(np.float32)
  n, metabolite = np.array([8, 10, 12]), np.array([0, 3, 6])
  sharpness = np.array([0.0, 0.05, 0.1], np.float32)
  lr, scale = (np.array(a) for a in mrsi_pipeline.lr_input(jnp.asarray(maps["hr"]),
                                                           jnp.asarray(n)))
  out = generator.apply({"params": g_params}, lr, maps["t1"], maps["flair"], n, metabolite,
                        sharpness, mask)
  images = np.stack([maps["t1"], maps["flair"], lr, np.array(out)], -1)
  scores = critic.apply({"params": c_params}, images)
  loss, _ = losses.mrsi_loss(out, jnp.asarray(maps["hr"]), jnp.asarray(mask))

  t_generator, t_critic = ref.MRSIUNet(channels, conditioning), ref.Critic(size, (4, 8), hidden=8)
  assert torch_reference.count_parameters(t_generator) == sum(p.size for p in jax.tree.leaves(g_params))
  assert torch_reference.count_parameters(t_critic) == sum(p.size for p in jax.tree.leaves(c_params))
  load_mrsi_params(t_generator, t_critic, g_params, c_params)
  tt = lambda a: torch.from_numpy(np.asarray(a))
  with torch.no_grad():
    t_lr, t_scale = ref.lr_input(tt(maps["hr"]), tt(n))
    np.testing.assert_allclose(t_lr.numpy(), lr, atol=1e-5)
    np.testing.assert_allclose(t_scale.numpy(), scale, rtol=1e-5)
    t_out = t_generator(tt(lr), tt(maps["t1"]), tt(maps["flair"]), tt(n), tt(metabolite),
                        tt(sharpness), tt(mask))
    np.testing.assert_allclose(t_out.numpy(), out, rtol=1e-4, atol=1e-4)
    t_scores = t_critic(tt(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(t_scores.numpy(), scores, rtol=1e-4, atol=1e-4)
    t_loss = ref.mrsi_loss(t_out, tt(maps["hr"]), tt(mask))
    np.testing.assert_allclose(float(t_loss), float(loss), rtol=1e-4)
