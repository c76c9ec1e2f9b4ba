"""benchmarks.profile_step: a traced train step's op times, attributed to the model's parts."""

import re

import pytest

from benchmarks import profile_step


def printed_parts(out: str) -> tuple[float, dict[str, float]]:
  """(traced total ms, {part: ms}) as `profile_step.main` prints them."""
  total = float(re.search(r"XLA ops ([\d.]+) ms/step traced", out).group(1))
  parts = dict((name.strip(), float(ms)) for name, ms in
               re.findall(r"^  (\S[^\n]*?)\s+([\d.]+) ms\s+[\d.]+ %$", out, re.M))
  return total, parts


# Each compiles and traces a whole train step: marked slow so that the workers start them early.


@pytest.mark.slow
def test_profile_attributes_the_step_to_encoder_and_decoder(capsys):
  profile_step.main(["--variant", "smoke", "--steps", "2", "--top", "3"])
  out = capsys.readouterr().out
  total, parts = printed_parts(out)
  assert parts["encoder (RDN)"] > 0 and parts["decoder MLP"] > 0
  assert abs(sum(parts.values()) - total) <= 0.01 * total + 0.2  # every op counted once
  assert len(re.findall(r"^  +[\d.]+ ms  \S+", out, re.M)) == 3  # --top ops listed


@pytest.mark.slow
def test_profile_attributes_the_mrsi_step_to_generator_critic_and_loss(capsys):
  profile_step.main(["--task", "mrsi", "--variant", "smoke", "--steps", "1", "--top", "2"])
  total, parts = printed_parts(capsys.readouterr().out)
  for part in ("generator (UNet)", "MS-SSIM loss", "critic updates: gradient penalty",
               "critic updates: scores, Adam", "critic score of the output"):
    assert parts[part] > 0, part
  assert abs(sum(parts.values()) - total) <= 0.01 * total + 0.2


def test_ops_are_attributed_by_their_source_path():
  hlo = ('  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%a), metadata={op_name="jit(step)/CSRdMRI.encode/'
         'encoder/conv_0/conv"}\n  ROOT %dot.1 = f32[4,4]{1,0} dot(%b, %c), metadata={op_name='
         '"jit(step)/transpose(jvp(x))/mlp/hidden_2/transpose"}\n')
  sources = profile_step.op_sources(hlo)
  assert profile_step.part_of(sources["ynn_fusion.3"]) == "encoder (RDN)"
  assert profile_step.part_of(sources["dot.1"]) == "decoder MLP"
  assert profile_step.kind_of("dot.1") == "XLA dot"
  mrsi = lambda path: profile_step.part_of(path, "mrsi")
  assert mrsi("jit(train_step)/critic_updates/gradient_penalty/transpose(jvp(Critic))/conv") == (
      "critic updates: gradient penalty")
  assert mrsi("jit(train_step)/critic_updates/jvp(Critic)/conv_1/conv") == (
      "critic updates: scores, Adam")
  assert mrsi("jit(train_step)/transpose(jvp(MRSIUNet))/t1_0_0/conv") == "generator (UNet)"
  assert mrsi("jit(train_step)/jvp(ms_ssim)/conv_general_dilated") == "MS-SSIM loss"
