
from jaxsr.evaluation import evaluated_volumes, markdown_table, summarise


def rows():
  out = []
  for subject, bonus in (("s1", 0.0), ("s2", 1.0)):
    for scale in (2.0, 3.0, 4.0, 2.4):
      out.append({"subject": subject, "method": "tricubic", "scale": scale,
                  "psnr": 30 - scale + bonus, "ssim": 0.9 - scale / 100})
      out.append({"subject": subject, "method": "csr_dmri", "scale": scale,
                  "psnr": 31 - scale + bonus, "ssim": 0.8})
  return out


def test_summarise_means_over_subjects_in_paper_column_order():
  table = summarise(rows())
  assert [r["scale"] for r in table[:4]] == [2.0, 3.0, 4.0, 2.4]
  assert [r["method"] for r in table] == ["tricubic"] * 4 + ["csr_dmri"] * 4
  row = next(r for r in table if r["method"] == "csr_dmri" and r["scale"] == 3.0)
  assert row["psnr"] == 28.5 and row["psnr_std"] == 0.5 and row["num_subjects"] == 2


def test_markdown_table_bolds_the_best_of_each_column():
  text = markdown_table(summarise(rows()))
  lines = text.strip().splitlines()
  assert lines[0].startswith("| method | 2× PSNR | 2× SSIM | 3× PSNR")
  assert "2.4× SSIM" in lines[0]
  csr = next(l for l in lines if l.startswith("| csr_dmri"))
  tri = next(l for l in lines if l.startswith("| tricubic"))
  assert csr.count("**") == 8 and tri.count("**") == 8  # PSNR wins for one, SSIM for the other
  assert "**29.5000**" in csr and "**0.8800**" in tri


def test_evaluated_volumes_spread_over_the_shell():
  assert evaluated_volumes(4, 64) == [0, 21, 42, 63]
  assert evaluated_volumes(10, 3) == [0, 1, 2]
  assert evaluated_volumes(1, 5) == [0]
