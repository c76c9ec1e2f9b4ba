"""benchmarks.train_step: model FLOPs count the model's arithmetic, however its MLP is evaluated."""

from benchmarks.train_step import model_flops
from configs import csr_dmri


def test_model_flops_count_a_chunked_mlp_in_full():
  """XLA's cost analysis counts a loop's body once: the chunked MLP must be counted unchunked."""
  whole = csr_dmri.get_config("smoke")
  chunked = csr_dmri.get_config("smoke")
  chunked.model.mlp_chunk_rows = 100  # batch 2 × 10³ queries: 20 chunks
  flops = model_flops(whole, 10)
  assert flops > 0
  assert model_flops(chunked, 10) == flops
