"""Result tables: means over units and seeds, exact Wilcoxon tests over units, Markdown.

Rows are dicts with "method", the unit ("subject" for dMRI, "patient" for MRSI),
grouping fields such as "scale", and metric values, optionally "volume" (several
scored volumes or maps of a unit) and "seed" (the training seed of a learned
method; absent or None for a classical one). The unit is the independent sample:
its volumes or maps are averaged before anything else, so they never count as
independent samples, and seeds measure the variance of training, reported beside
the mean.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

IMAGE_METRICS = (("psnr", "PSNR", max), ("ssim", "SSIM", max))
DTI_METRICS = (("fa_rmse", "FA RMSE", min), ("md_rmse", "MD RMSE", min))
SIGNIFICANCE = 0.05


def _scales_in_paper_order(rows: Iterable[dict]) -> list[float]:
  """Integer scales first, then non-integer ones (2, 3, 4, 2.4 as the paper's tables)."""
  return sorted({r["scale"] for r in rows}, key=lambda s: (s != int(s), s))


def _mean_by(rows: list[dict], group: Sequence[str], key: str) -> dict[tuple, float]:
  """Mean of `key` over the rows of each value of the `group` fields."""
  groups: dict[tuple, list[float]] = {}
  for r in rows:
    groups.setdefault(tuple(r.get(g) for g in group), []).append(r[key])
  return {g: float(np.mean(values)) for g, values in groups.items()}


def unit_means(rows: list[dict], key: str, unit: str = "subject", **where) -> dict[str, float]:
  """{unit: mean of `key`} over the rows matching `where` (field=value), e.g. one method and scale.

  `unit` is the independent sample ("subject"; "patient" for MRSI): each seed's rows of a
  unit (volumes, maps, n) are averaged first, then the seeds, so every seed weighs the same.
  """
  sel = [r for r in rows if all(r[field] == value for field, value in where.items())]
  per_seed = _mean_by(sel, (unit, "seed"), key)
  units = dict.fromkeys(u for u, _ in per_seed)
  return {u: float(np.mean([v for (each, _), v in per_seed.items() if each == u]))
          for u in units}


def _groups(rows: list[dict], by: Sequence[str]) -> list[tuple]:
  """The values of the `by` fields present in `rows`, scales in the paper's order."""
  if not by:
    return [()]
  if tuple(by) == ("scale",):
    return [(s,) for s in _scales_in_paper_order(rows)]
  return list(dict.fromkeys(tuple(r[b] for b in by) for r in rows))


def summarise(rows: list[dict], keys: Sequence[str] = ("psnr", "ssim"), *,
              unit: str = "subject", by: Sequence[str] = ("scale",)) -> list[dict]:
  """Means for each method and value of the `by` fields: over units, then over seeds.

  Entries: "method", the `by` fields, "num_<unit>s", "num_seeds" (0 for a classical
  method), "num_rows", and for each key its mean, `{key}_std` (sd over units of the
  per-unit means, seeds averaged) and `{key}_seed_std` (sd over seeds of the per-seed
  means over units, ddof 1; 0 with fewer than two seeds).
  """
  table = []
  for method in dict.fromkeys(r["method"] for r in rows):
    for group in _groups(rows, by):
      sel = [r for r in rows if r["method"] == method
             and all(r[b] == value for b, value in zip(by, group))]
      if not sel:
        continue
      seeds = list(dict.fromkeys(r.get("seed") for r in sel))
      entry = {"method": method, **dict(zip(by, group)),
               f"num_{unit}s": len(dict.fromkeys(r[unit] for r in sel)),
               "num_seeds": sum(seed is not None for seed in seeds), "num_rows": len(sel)}
      for key in keys:
        per_unit = unit_means(sel, key, unit)
        per_seed_unit = _mean_by(sel, ("seed", unit), key)
        seed_means = [np.mean([v for (seed, _), v in per_seed_unit.items() if seed == s])
                      for s in seeds]
        entry[key] = float(np.mean(seed_means))
        entry[f"{key}_std"] = float(np.std(list(per_unit.values())))
        entry[f"{key}_seed_std"] = float(np.std(seed_means, ddof=1)) if len(seeds) > 1 else 0.0
      table.append(entry)
  return table


def smallest_p(num_pairs: int) -> float:
  """The smallest two-sided p an exact signed-rank test can give with `num_pairs` pairs."""
  return min(1.0, 2.0 * 0.5 ** num_pairs) if num_pairs else 1.0


def signed_rank_p(differences: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value of paired differences: NaN below 2 pairs, 1 if all 0.

  Exact (the permutation distribution) when there are no zeros or tied magnitudes,
  as with per-subject means; scipy's normal approximation otherwise.
  """
  differences = np.asarray(differences, float)
  if len(differences) < 2:
    return float("nan")
  if not np.any(differences):
    return 1.0
  from scipy import stats  # on use: it slows every command's start-up

  magnitudes = np.abs(differences)
  exact = np.all(magnitudes > 0) and len(np.unique(magnitudes)) == len(magnitudes)
  return float(stats.wilcoxon(differences, method="exact" if exact else "approx").pvalue)


def wilcoxon(rows: list[dict], reference: str, keys: Sequence[str] = ("psnr", "ssim"), *,
             unit: str = "subject", by: Sequence[str] = ("scale",)) -> list[dict]:
  """Two-sided Wilcoxon signed-rank tests of `reference` against every other method, for
  each value of the `by` fields.

  Pairs are units (each unit's mean over its volumes or maps and seeds), the
  independent samples; "num_<unit>s" is their count and "smallest_p" the least p
  an exact test can reach with that many. p is NaN below two units and 1 when
  all differences are 0.
  """
  out = []
  for method in dict.fromkeys(r["method"] for r in rows):
    if method == reference:
      continue
    for group in _groups(rows, by):
      where = dict(zip(by, group))
      entry = {"method": method, "reference": reference, **where}
      for key in keys:
        ref, other = (unit_means(rows, key, unit, method=m, **where)
                      for m in (reference, method))
        units = [u for u in ref if u in other]
        entry[f"{key}_p"] = signed_rank_p(np.array([ref[u] - other[u] for u in units]))
        entry[f"num_{unit}s"] = len(units)
        entry["smallest_p"] = smallest_p(len(units))
      out.append(entry)
  return out


def markdown_table(table: list[dict], metrics=IMAGE_METRICS, methods: Sequence[str] | None = None,
                   extra_columns: dict[str, dict[str, str]] | None = None) -> str:
  """Methods × scales, one column per (scale, metric); the best of each column in bold.

  A method trained with several seeds shows its mean over seeds ± their sd.

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
        entry = cell[m, s]
        text = f"{entry[key]:.4f}"
        text = f"**{text}**" if entry[key] == best[s, key] else text
        if entry.get("num_seeds", 0) > 1:
          text += f" ± {entry[f'{key}_seed_std']:.4f}"
        values.append(text)
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
  counts = sorted({r["num_subjects"] for r in pvalues})
  least = smallest_p(min(counts))
  lines.append(f"\nTwo-sided Wilcoxon signed-rank tests over subjects ({'/'.join(map(str, counts))} "
               f"per-subject means, each over the subject's scored volumes and the seeds), "
               f"exact; the smallest p possible with {min(counts)} subjects is {least:.2g}"
               + (f", so no difference can be significant at {SIGNIFICANCE}." if least >= SIGNIFICANCE
                  else "."))
  return "\n".join(lines) + "\n"
