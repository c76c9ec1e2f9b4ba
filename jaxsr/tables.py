"""Result tables: means over test subjects, Wilcoxon signed-rank tests, Markdown rendering.

Rows are dicts with "method", "scale", "subject" and metric values; rows may be
per volume ("volume" key), in which case a subject's volumes are averaged first.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import stats

IMAGE_METRICS = (("psnr", "PSNR", max), ("ssim", "SSIM", max))
DTI_METRICS = (("fa_rmse", "FA RMSE", min), ("md_rmse", "MD RMSE", min))


def _scales_in_paper_order(rows: Iterable[dict]) -> list[float]:
  """Integer scales first, then non-integer ones (2, 3, 4, 2.4 as the paper's tables)."""
  return sorted({r["scale"] for r in rows}, key=lambda s: (s != int(s), s))


def summarise(rows: list[dict], keys: Sequence[str] = ("psnr", "ssim")) -> list[dict]:
  """Mean and std over subjects for each (method, scale), each subject's volumes averaged first."""
  table = []
  for method in dict.fromkeys(r["method"] for r in rows):
    for scale in _scales_in_paper_order(rows):
      sel = [r for r in rows if r["method"] == method and r["scale"] == scale]
      if not sel:
        continue
      subjects = list(dict.fromkeys(r["subject"] for r in sel))
      entry = {"method": method, "scale": scale, "num_subjects": len(subjects)}
      for key in keys:
        per_subject = [np.mean([r[key] for r in sel if r["subject"] == s]) for s in subjects]
        entry[key] = float(np.mean(per_subject))
        entry[f"{key}_std"] = float(np.std(per_subject))
      table.append(entry)
  return table


def signed_rank_p(differences: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value of paired differences: NaN below 2 pairs, 1 if all 0."""
  if len(differences) < 2:
    return float("nan")
  if not np.any(differences):
    return 1.0
  return float(stats.wilcoxon(differences).pvalue)


def wilcoxon(rows: list[dict], reference: str, keys: Sequence[str] = ("psnr", "ssim")) -> list[dict]:
  """Two-sided Wilcoxon signed-rank p-values of `reference` against every other method.

  Pairs are the (subject, volume) samples that both methods were scored on, per
  scale. p is NaN when fewer than two pairs exist and 1 when all differences are 0.
  """
  def sample(method, scale, key):
    return {(r["subject"], r.get("volume")): r[key] for r in rows
            if r["method"] == method and r["scale"] == scale}

  out = []
  for method in dict.fromkeys(r["method"] for r in rows):
    if method == reference:
      continue
    for scale in _scales_in_paper_order(rows):
      entry = {"method": method, "reference": reference, "scale": scale}
      for key in keys:
        ref, other = sample(reference, scale, key), sample(method, scale, key)
        pairs = sorted(set(ref) & set(other), key=str)
        entry[f"{key}_p"] = signed_rank_p(np.array([ref[p] - other[p] for p in pairs]))
        entry["num_pairs"] = len(pairs)
      out.append(entry)
  return out


def markdown_table(table: list[dict], metrics=IMAGE_METRICS, methods: Sequence[str] | None = None,
                   extra_columns: dict[str, dict[str, str]] | None = None) -> str:
  """Methods × scales, one column per (scale, metric); the best of each column in bold.

  Args:
    table: `summarise` rows.
    metrics: (key, label, best) triples; `best` is max or min.
    methods: row order (default: as in `table`).
    extra_columns: {header: {method: cell}} columns placed after the method name.
  """
  scales = _scales_in_paper_order(table)
  methods = list(methods or dict.fromkeys(r["method"] for r in table))
  extra_columns = extra_columns or {}
  cell = {(r["method"], r["scale"]): r for r in table}
  best = {(s, key): pick(cell[m, s][key] for m in methods)
          for s in scales for key, _, pick in metrics}
  headers = ["method", *extra_columns,
             *(f"{s:g}× {label}" for s in scales for _, label, _ in metrics)]
  lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
  for m in methods:
    values = [m] + [column.get(m, "") for column in extra_columns.values()]
    for s in scales:
      for key, _, _ in metrics:
        text = f"{cell[m, s][key]:.4f}"
        values.append(f"**{text}**" if cell[m, s][key] == best[s, key] else text)
    lines.append("| " + " | ".join(values) + " |")
  return "\n".join(lines) + "\n"


def markdown_pvalues(pvalues: list[dict], methods: Sequence[str] | None = None,
                     keys: Sequence[str] = ("psnr", "ssim")) -> str:
  """Wilcoxon p-values of the reference against each method, one column per (scale, metric)."""
  if not pvalues:
    return ""
  scales = _scales_in_paper_order(pvalues)
  methods = [m for m in (methods or dict.fromkeys(r["method"] for r in pvalues))
             if any(r["method"] == m for r in pvalues)]
  cell = {(r["method"], r["scale"]): r for r in pvalues}
  labels = dict((key, label) for key, label, _ in IMAGE_METRICS)
  headers = [f"{pvalues[0]['reference']} vs", *(f"{s:g}× {labels.get(k, k)} p" for s in scales
                                                 for k in keys)]
  lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
  for m in methods:
    values = [m] + [f"{cell[m, s][f'{k}_p']:.2g}" for s in scales for k in keys]
    lines.append("| " + " | ".join(values) + " |")
  pairs = sorted({r["num_pairs"] for r in pvalues})
  lines.append(f"\nTwo-sided Wilcoxon signed-rank tests over paired (subject, volume) scores "
               f"({'/'.join(map(str, pairs))} pairs).")
  return "\n".join(lines) + "\n"
