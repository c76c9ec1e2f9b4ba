"""The benchmarks' PyTorch model computes jaxsr's CSR-dMRI function (needs the `bench` extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference  # noqa: E402
from jaxsr.data.degrade import degrade  # noqa: E402
from jaxsr.models import CSRdMRI, init_params  # noqa: E402

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


def test_same_parameters_give_the_same_intensities_at_any_coordinate():
  model = CSRdMRI(**TINY)
  params = init_params(model, jax.random.key(0, impl="rbg"), in_channels=2, lr_shape=(5, 4, 6))
  params = jax.tree.map(lambda p: p + 0.1 * jnp.sign(p + 0.5), params)  # non-zero biases too
  reference = torch_reference.CSRdMRI(2, **TINY)
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
