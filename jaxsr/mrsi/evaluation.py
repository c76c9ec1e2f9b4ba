"""MRSI evaluation from checkpoints: Table 1, Wilcoxon tests, condition studies, sharpness study.

Protocol: for each fold of the study, every usable slice of the fold's test
patients and each metabolite of `eval.metabolites` gives an acquired HR map
(`jaxsr.mrsi.pipeline.example`); for each n of `data.n_values` its central
n × n k-space is kept and normalised by its own scale (`pipeline.lr_input`,
as in training and `jaxsr upsample-mrsi`), and every method brings it back to
64 × 64 in mM. PSNR and 2D SSIM are taken inside the quality mask against the
truth there, both divided by the truth's peak in the mask (data range 1).
Methods: k-space zero-filling and the study's trained networks at λ = 0
(Single-scale: the network trained at that n).

The independent unit is the patient: Table 1 gives the mean ± sd over patients
of each patient's mean over its maps and n, and the Wilcoxon tests pair
patients (exact; with few patients no difference can be significant, and the
table says so).

Condition studies (first fold): the Filter Scaling with Met network with its
convolutions conditioned on another n or metabolite than the input's. Sharpness
study (first fold): the adversarially trained network at each λ of
`eval.sharpness_lambdas`, scored with PSNR, SSIM and two sharpness measures
(`metrics.gradient_sharpness`, `metrics.high_frequency_ratio`; LPIPS, the
paper's perceptual measure, needs pretrained weights that cannot be downloaded).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxsr import files, kspace, metrics, tables
from jaxsr.mrsi import figures, phantom, pipeline
from jaxsr.mrsi import step as step_lib
from jaxsr.mrsi.task import study_runs
from jaxsr.train.checkpoint import TrainedRun, count_parameters, load_run, run_dir
from jaxsr.train.run_record import training_seconds, write_run_record

LABELS = {
    "zero_fill": "k-space zero-filling",
    "single_scale": "Single-scale",
    "unconditioned": "Unconditioned",
    "amlayer": "AMLayer",
    "hypernetwork": "Hypernetworks",
    "filter_scaling": "Filter Scaling",
    "filter_scaling_met": "Filter Scaling with Met",
    "filter_scaling_met_no_anatomy": "Filter Scaling with Met, no T1/FLAIR",
}
PAPER_PARAMS = {"single_scale": 8.7e6, "unconditioned": 1.0e6, "amlayer": 1.5e6,
                "hypernetwork": 26e6, "filter_scaling": 3.9e6, "filter_scaling_met": 6.9e6}
CONDITION_METHOD = "filter_scaling_met"  # the network of the condition studies


@dataclasses.dataclass(frozen=True)
class TestMaps:
  """K test maps: "hr" (acquired, mM), "t1", "flair", "mask" (K, 64, 64), and their identities."""
  images: dict[str, np.ndarray]
  metabolite: np.ndarray  # (K,) int32
  patient: list[str]
  slice: np.ndarray  # (K,) int

  def __len__(self) -> int:
    return len(self.metabolite)

  @functools.cached_property  # computed once per set of maps (frozen: stored in __dict__)
  def peaks(self) -> np.ndarray:
    """(K,) each truth's maximum inside its quality mask: the metrics' unit."""
    masked = np.where(self.images["mask"] > 0, self.images["hr"], -np.inf)
    return masked.reshape(len(self), -1).max(axis=1)

  def in_peak_units(self, maps: np.ndarray) -> np.ndarray:
    """(K, 64, 64) maps in mM divided by the truths' peaks (the truth's peak becomes 1)."""
    return maps / self.peaks[:, None, None]

  @functools.cached_property
  def truth(self) -> np.ndarray:
    """(K, 64, 64) the truths inside their quality masks, in peak units (0 outside)."""
    return self.in_peak_units(self.images["hr"] * self.images["mask"])


def test_maps(patients: list[phantom.Patient], eval_config) -> TestMaps:
  """The maps scored for `patients`: `eval.metabolites` of every usable slice (or of
  `eval.max_slices_per_patient` slices spread over each patient's usable ones)."""
  rows = pipeline.example_index(patients, eval_config.metabolites)
  limit = eval_config.max_slices_per_patient
  if limit:
    keep = set()
    for p in range(len(patients)):
      slices = np.unique(rows[rows[:, 0] == p, 1])
      spread = np.linspace(0, len(slices) - 1, min(limit, len(slices))).round().astype(int)
      keep |= {(p, int(s)) for s in slices[spread]}
    rows = rows[[(int(p), int(s)) in keep for p, s, _ in rows]]
  examples = [pipeline.example(patients, r) for r in rows]
  images = {k: np.stack([e[k] for e in examples]) for k in ("hr", "t1", "flair", "mask")}
  return TestMaps(images, rows[:, 2].astype(np.int32), [patients[p].name for p in rows[:, 0]],
                  rows[:, 1])


class Generator:
  """A trained MRSI network applied to `TestMaps` in fixed-size batches (one compilation)."""

  def __init__(self, run: TrainedRun, batch_size: int):
    self.run = run
    self.batch_size = batch_size
    self._apply = jax.jit(lambda variables, *inputs: run.model.apply(variables, *inputs))

  def __call__(self, maps: TestMaps, n: int, *, sharpness: float = 0.0,
               n_condition: int | None = None, metabolite: np.ndarray | None = None
               ) -> np.ndarray:
    """(K, 64, 64) outputs for input matrix size n at λ = `sharpness`, conditioned on
    `n_condition` (default n) and `metabolite` (default the maps' own)."""
    k, size = len(maps), self.batch_size
    padded = -(-k // size) * size
    pad = lambda a: np.concatenate([a, np.repeat(a[:1], padded - k, axis=0)])
    images = {key: pad(v) for key, v in maps.images.items()}
    condition = pad(maps.metabolite if metabolite is None else np.asarray(metabolite, np.int32))
    full = lambda value: np.full(size, value)
    outputs = []
    for start in range(0, padded, size):
      part = slice(start, start + size)
      lr, scale = pipeline.lr_input(jnp.asarray(images["hr"][part]), n)
      output = self._apply(
          self.run.variables, lr, images["t1"][part], images["flair"][part],
          full(n).astype(np.int32), condition[part], full(sharpness).astype(np.float32),
          images["mask"][part], full(n if n_condition is None else n_condition)
          .astype(np.int32))
      outputs.append(np.asarray(output * scale[:, None, None]))
    return np.concatenate(outputs)[:k]


def zero_fill(maps: TestMaps, n: int) -> np.ndarray:
  """The k-space zero-filling baseline in mM, masked like the networks' outputs."""
  return np.asarray(kspace.truncate(jnp.asarray(maps.images["hr"]), n)) * maps.images["mask"]


def score(outputs: np.ndarray, maps: TestMaps) -> tuple[np.ndarray, np.ndarray]:
  """Per-map PSNR (dB) and SSIM of outputs (mM) inside the quality mask, in peak units."""
  truth, mask = maps.truth, maps.images["mask"] > 0
  outputs = maps.in_peak_units(outputs)
  psnr = np.array([metrics.psnr(o, t, m, data_range=1.0) for o, t, m in zip(outputs, truth, mask)])
  ssim = np.array([metrics.ssim(o, t, m, data_range=1.0) for o, t, m in zip(outputs, truth, mask)])
  return psnr, ssim


def _rows(method: str, fold: int, n: int, maps: TestMaps, psnr, ssim) -> list[dict]:
  return [{"method": method, "fold": fold, "patient": maps.patient[i], "slice": int(maps.slice[i]),
           "metabolite": phantom.METABOLITES[maps.metabolite[i]], "n": n,
           "psnr": float(psnr[i]), "ssim": float(ssim[i])} for i in range(len(maps))]


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
  """Per method: mean ± sd over patients of each patient's mean PSNR and SSIM (maps and n)."""
  table = tables.summarise(rows, unit="patient", by=())
  return sorted(table, key=lambda entry: methods.index(entry["method"]))


def pairwise_wilcoxon(rows: list[dict], methods: list[str]) -> dict[str, dict[str, dict]]:
  """{a: {b: {"psnr_p", "ssim_p", "num_patients", "smallest_p"}}}: signed-rank tests of a
  against b over the patients both were scored on (each patient's mean over maps and n)."""
  selected = [r for r in rows if r["method"] in methods]
  return {a: {e["method"]: e for e in tables.wilcoxon(selected, a, unit="patient", by=())}
          for a in methods}


def _format_p(p: float) -> str:
  """A p-value to 2 significant digits; one that underflowed to 0 as '< 1e-300'."""
  return "< 1e-300" if p == 0 else f"{p:.2g}"


def _format_params(count: float) -> str:
  return f"{count / 1e6:.2f}M" if count else ""


def _format_time(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds else ""


def markdown_table1(table: list[dict], seconds: dict[str, float], params: dict[str, int],
                    wilcoxon: dict) -> str:
  """Table 1 (PSNR, SSIM mean ± std; training time; parameters beside the paper's) and the
  Wilcoxon p-values of each method against Filter Scaling with Met."""
  best = {key: max(r[key] for r in table) for key in ("psnr", "ssim")}
  lines = ["| method | PSNR (dB) | SSIM | training time (all folds) | parameters | "
           "paper's parameters |",
           "|---|---|---|---|---|---|"]
  for r in table:
    m = r["method"]
    cells = []
    for key, digits in (("psnr", 2), ("ssim", 4)):
      text = f"{r[key]:.{digits}f} ± {r[f'{key}_std']:.{digits}f}"
      cells.append(f"**{text}**" if r[key] == best[key] else text)
    paper = PAPER_PARAMS.get(m)
    lines.append(f"| {LABELS.get(m, m)} | {' | '.join(cells)} | {_format_time(seconds.get(m, 0))} "
                 f"| {_format_params(params.get(m, 0))} | "
                 f"{_format_params(paper) if paper else ''} |")
  text = "\n".join(lines) + "\n"
  reference = CONDITION_METHOD
  if reference in wilcoxon:
    lines = [f"\n{LABELS[reference]} against each method (two-sided Wilcoxon signed-rank "
             "test over patients, each patient's mean over its maps and n; exact):\n",
             "| method | PSNR p | SSIM p | patients |", "|---|---|---|---|"]
    for other, result in wilcoxon[reference].items():
      p_values = [_format_p(result[f"{key}_p"]) for key in ("psnr", "ssim")]
      lines.append(f"| {LABELS.get(other, other)} | {' | '.join(p_values)} | "
                   f"{result['num_patients']} |")
    least = max(r["smallest_p"] for r in wilcoxon[reference].values())
    count = min(r["num_patients"] for r in wilcoxon[reference].values())
    lines.append(f"\nThe smallest p possible with {count} patients is {least:.2g}"
                 + (f": no difference can be significant at {tables.SIGNIFICANCE}."
                    if least >= tables.SIGNIFICANCE else "."))
    text += "\n".join(lines) + "\n"
  return text


def markdown_by_n(rows: list[dict], methods: list[str], n_values) -> str:
  """Mean PSNR / SSIM per method and input matrix size n."""
  lines = ["| method | " + " | ".join(f"n={n}" for n in n_values) + " |",
           "|---" * (len(n_values) + 1) + "|"]
  for m in methods:
    cells = []
    for n in n_values:
      sel = [r for r in rows if r["method"] == m and r["n"] == n]
      cells.append(f"{np.mean([r['psnr'] for r in sel]):.2f} / "
                   f"{np.mean([r['ssim'] for r in sel]):.4f}" if sel else "")
    lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def condition_study(generator: Generator, maps: TestMaps, n_values) -> dict[str, np.ndarray]:
  """Mean SSIM with conditions differing from the input's.

  Returns {"n": (len(n_values), len(n_values)) SSIM[conditioned n, input n] over all
  maps, "metabolite": (M, M) SSIM[conditioned metabolite, input metabolite] over all n}
  (M = metabolites present in `maps`, in `phantom.METABOLITES` order).
  """
  by_n = np.zeros((len(n_values), len(n_values)))
  for j, n_in in enumerate(n_values):
    for i, n_cond in enumerate(n_values):
      by_n[i, j] = score(generator(maps, n_in, n_condition=n_cond), maps)[1].mean()
  present = np.unique(maps.metabolite)
  by_met = np.zeros((len(present), len(present)))
  for i, m_cond in enumerate(present):
    ssim = np.mean([score(generator(maps, n, metabolite=np.full(len(maps), m_cond)), maps)[1]
                    for n in n_values], axis=0)
    for j, m_in in enumerate(present):
      by_met[i, j] = ssim[maps.metabolite == m_in].mean()
  return {"n": by_n, "metabolite": by_met, "metabolites": present}


def sharpness_study(generator: Generator, maps: TestMaps, n_values, lambdas) -> list[dict]:
  """Per λ: mean PSNR, SSIM, gradient sharpness and high-frequency ratio over maps and n."""
  table = []
  for lam in lambdas:
    values = {"psnr": [], "ssim": [], "gradient_sharpness": [], "high_frequency_ratio": []}
    for n in n_values:
      outputs = generator(maps, n, sharpness=lam)
      psnr, ssim = score(outputs, maps)
      values["psnr"] += list(psnr)
      values["ssim"] += list(ssim)
      for o, t, m in zip(maps.in_peak_units(outputs), maps.truth, maps.images["mask"] > 0):
        values["gradient_sharpness"].append(metrics.gradient_sharpness(o, t, m))
        values["high_frequency_ratio"].append(metrics.high_frequency_ratio(o, t, n))
    table.append({"lambda": float(lam), **{k: float(np.mean(v)) for k, v in values.items()}})
  return table


def markdown_sharpness(table: list[dict]) -> str:
  lines = ["| λ | PSNR (dB) | SSIM | gradient sharpness | high-frequency ratio |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['lambda']:g} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['gradient_sharpness']:.3f} | {r['high_frequency_ratio']:.3f} |" for r in table]
  return "\n".join(lines) + "\n"


def _sharpness_examples(generator: Generator, maps: TestMaps, n_values, lambdas, path) -> None:
  """Fig. 3: rows of (metabolite, n, patient) examples; zero-filling, λ values, truth, FLAIR."""
  choices = []
  for r, m in enumerate(np.unique(maps.metabolite)[:3]):
    candidates = np.flatnonzero(maps.metabolite == m)
    choices.append((int(candidates[len(candidates) // 2]), int(n_values[min(r, len(n_values) - 1)])))
  rows = []
  for index, n in choices:
    single = TestMaps({k: v[index:index + 1] for k, v in maps.images.items()},
                      maps.metabolite[index:index + 1], maps.patient[index:index + 1],
                      maps.slice[index:index + 1])
    truth, mask = single.truth[0], single.images["mask"][0] > 0
    panels = {"zero-filling": single.in_peak_units(zero_fill(single, n))[0]}
    panels.update({f"λ = {lam:g}": single.in_peak_units(generator(single, n, sharpness=lam))[0]
                   for lam in lambdas})
    captions = {name: f"{metrics.psnr(img, truth, mask, 1.0):.1f} / "
                      f"{metrics.ssim(img, truth, mask, 1.0):.3f} / "
                      f"{metrics.gradient_sharpness(img, truth, mask):.2f}"
                for name, img in panels.items()}
    panels["truth"] = truth
    panels["FLAIR"] = single.images["flair"][0]
    rows.append((f"{phantom.METABOLITES[single.metabolite[0]]}, n={n}, {single.patient[0]}",
                 panels, captions))
  figures.map_rows(rows, path, title="Sharpness: PSNR / SSIM / gradient sharpness under each map")


@dataclasses.dataclass
class StudyScores:
  """What scoring the study's runs gathers: per-map rows and, per method or run, training
  seconds (summed over its runs and folds), parameters (of the first fold) and steps."""
  rows: list = dataclasses.field(default_factory=list)
  seconds: dict = dataclasses.field(default_factory=dict)
  params: dict = dataclasses.field(default_factory=dict)
  steps: dict = dataclasses.field(default_factory=dict)


def fold_maps(config, fold: int) -> TestMaps:
  """The test maps of cross-validation fold `fold`."""
  data = config.data.to_dict() | {"fold": fold}
  patients = phantom.load_patients(data["cache_dir"], data["num_patients"], data["seed"],
                                   decoupled=data.get("decoupled", True))
  split = phantom.cross_validation_split(data["num_patients"], fold, data["num_folds"])
  return test_maps([patients[i] for i in split["test"]], config.eval)


def method_runs(method: str, fold: int, n_values) -> dict[int, str]:
  """{n: run name} of `method` in `fold`: one network per n for Single-scale, else one for all."""
  return {n: f"fold{fold}/single_scale_n{n}" if method == "single_scale" else
          f"fold{fold}/{method}" for n in n_values}


def score_fold(config, workdir: pathlib.Path, fold: int, maps: TestMaps, n_values,
               scores: StudyScores, count_params: bool) -> dict[str, Generator]:
  """Scores zero-filling and every method's runs of `fold` on `maps` into `scores`; returns the
  runs' generators by name."""
  generators = {}
  progress = tqdm(total=(len(config.methods) + 1) * len(n_values),
                  desc=f"evaluate fold {fold}", dynamic_ncols=True)
  with progress:
    for n in n_values:
      scores.rows += _rows("zero_fill", fold, n, maps, *score(zero_fill(maps, n), maps))
      progress.update()
    for method in config.methods:
      names = method_runs(method, fold, n_values)
      for name in dict.fromkeys(names.values()):
        directory = run_dir(config, workdir, name)
        run = load_run(directory, family_steps=[step_lib])
        scores.steps[name] = run.step
        scores.seconds[method] = scores.seconds.get(method, 0.0) + training_seconds(directory)
        if count_params:
          scores.params[method] = scores.params.get(method, 0) + count_parameters(run.variables)
        generators[name] = Generator(run, config.eval.batch_size)
      for n, name in names.items():
        scores.rows += _rows(method, fold, n, maps, *score(generators[name](maps, n), maps))
        progress.update()
  return generators


def condition_extras(generator: Generator, maps: TestMaps, n_values, fold: int,
                     out_dir: pathlib.Path) -> dict:
  """The condition studies of `generator` (fold `fold`) as JSON, their heat maps written."""
  study = condition_study(generator, maps, n_values)
  extras = {"fold": fold, "n_values": list(n_values), "ssim_by_n": study["n"].tolist(),
            "metabolites": [phantom.METABOLITES[m] for m in study["metabolites"]],
            "ssim_by_metabolite": study["metabolite"].tolist()}
  title = f"SSIM, {LABELS[CONDITION_METHOD]}, fold {fold}"
  figures.condition_heatmap(study["n"], [str(n) for n in n_values], "input n", "conditioned n",
                            out_dir / "condition_n.png", title=title)
  figures.condition_heatmap(study["metabolite"], extras["metabolites"], "input metabolite",
                            "conditioned metabolite", out_dir / "condition_metabolite.png",
                            title=title)
  return extras


def sharpness_extras(config, generator: Generator, maps: TestMaps, n_values, fold: int,
                     out_dir: pathlib.Path) -> dict:
  """The sharpness study of the adversarially trained run as JSON, its figures written."""
  table = sharpness_study(generator, maps, n_values, config.eval.sharpness_lambdas)
  figures.sharpness_curves(table, out_dir / "sharpness.png",
                           title=f"{LABELS[config.sharpness_method]} + WGAN-GP, fold {fold}")
  _sharpness_examples(generator, maps, n_values, config.eval.figure_lambdas,
                      out_dir / "sharpness_examples.png")
  return {"fold": fold, "method": config.sharpness_method, "table": table}


def markdown_conditions(study: dict) -> str:
  """How often the best condition is the matched one, and matched against mismatched SSIM."""
  by_n, by_met = np.array(study["ssim_by_n"]), np.array(study["ssim_by_metabolite"])
  offset = np.abs(by_n.argmax(0) - np.arange(len(by_n)))  # in steps of the n grid
  return (f"\n### Condition studies ({LABELS[CONDITION_METHOD]}, fold {study['fold']})\n\n"
          f"The best conditioned n equals the input's for {np.sum(offset == 0)} of "
          f"{len(by_n)} input n and is within one step of it for {np.sum(offset <= 1)}; the "
          "best conditioned metabolite equals the input's for "
          f"{np.sum(by_met.argmax(0) == np.arange(len(by_met)))} of {len(by_met)} metabolites. "
          "Mean SSIM of matched conditions: "
          f"{np.mean(np.diag(by_n)):.4f} (n), {np.mean(np.diag(by_met)):.4f} (metabolite); "
          f"of mismatched ones: {by_n[~np.eye(len(by_n), dtype=bool)].mean():.4f}, "
          f"{by_met[~np.eye(len(by_met), dtype=bool)].mean():.4f} "
          "(condition_n.png, condition_metabolite.png).\n")


def evaluate(config, workdir: str | pathlib.Path, out: str | os.PathLike | None = None) -> str:
  """Evaluates the study's runs in `workdir` and returns the Markdown it wrote.

  Writes `WORKDIR/eval/`: `table1.md` (Table 1, Wilcoxon tests, per-n table,
  condition and sharpness studies), `tables.json` (all numbers, per-map scores
  included), `condition_n.png`, `condition_metabolite.png`, `sharpness.png`,
  `sharpness_examples.png` and `run.json` (`out` replaces WORKDIR/eval; checked
  writable before any scoring). The condition and sharpness studies use the first fold.
  """
  workdir = pathlib.Path(workdir)
  study_runs(config)  # unknown methods fail here, before any scoring
  n_values = tuple(int(n) for n in config.data.n_values)
  out_dir = pathlib.Path(out) if out else workdir / "eval"
  files.check_can_create(out_dir)
  scores, extras = StudyScores(), {}
  for f_index, fold in enumerate(config.folds):
    maps = fold_maps(config, fold)
    generators = score_fold(config, workdir, fold, maps, n_values, scores,
                            count_params=f_index == 0)
    if f_index:
      continue
    if CONDITION_METHOD in config.methods:
      extras["condition_study"] = condition_extras(
          generators[f"fold{fold}/{CONDITION_METHOD}"], maps, n_values, fold, out_dir)
    if config.sharpness_method:
      name = f"fold{fold}/sharpness_{config.sharpness_method}"
      run = load_run(run_dir(config, workdir, name), family_steps=[step_lib])
      scores.steps[name] = run.step
      extras["sharpness"] = sharpness_extras(config, Generator(run, config.eval.batch_size),
                                             maps, n_values, fold, out_dir)

  methods = ["zero_fill", *config.methods]
  table = summarise(scores.rows, methods)
  wilcoxon = pairwise_wilcoxon(scores.rows, methods)
  text = ("## Table 1: multi-scale MRSI super-resolution (λ = 0), mean ± sd over the test "
          f"patients of folds {tuple(config.folds)} (each patient: mean over its maps and n in "
          f"{n_values})\n\n"
          + markdown_table1(table, scores.seconds, scores.params, wilcoxon)
          + "\n### PSNR (dB) / SSIM by input matrix size n\n\n"
          + markdown_by_n(scores.rows, methods, n_values))
  if "condition_study" in extras:
    text += markdown_conditions(extras["condition_study"])
  if "sharpness" in extras:
    text += (f"\n### Sharpness against λ ({LABELS[extras['sharpness']['method']]} trained with "
             f"the adversarial loss, fold {extras['sharpness']['fold']})\n\n"
             + markdown_sharpness(extras["sharpness"]["table"]))
  write_run_record(out_dir / "run.json", config, checkpoint_steps=scores.steps)
  files.write_text(out_dir / "table1.md", text)
  files.write_json(out_dir / "tables.json",
                   {"table1": table, "training_seconds": scores.seconds,
                    "parameters": scores.params, "wilcoxon": wilcoxon,
                    "checkpoint_steps": scores.steps, **extras, "per_map": scores.rows})
  return text
