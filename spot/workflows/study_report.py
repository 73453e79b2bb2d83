"""The study's numbers: scores, relative error reduction, correlation, retrieval.

Scores are on a 0..100 scale; a run's error is `100 - score`, and the relative
error reduction of a transfer over its target's baseline is

    RER = (err_baseline - err_transfer) / err_baseline

(positive: the source helped). Each is computed from the means over seeds.
Retrieval is scored per seed and target: best of top-k is the best transfer
among the k sources most similar to the target (its embedding against theirs),
the oracle the best among all candidates; each is averaged over targets, then
reported as mean +- std over seeds. The eliminated search space is 1 - k/N for
the smallest k whose gain over the baseline is at least 90% of the oracle's.

Every function takes what has finished: a missing run leaves its cell out and
marks its row partial, never a made-up number.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from etils import epath

from spot.workflows import study as study_lib

METRICS = ("avg_tokens", "per_token")
GAIN_KEPT = 0.9


@dataclasses.dataclass
class Collected:
  """What a study directory holds so far.

  Attributes:
    spec: the study.
    scores: run_id -> score (finished runs only).
    missing: run ids not finished.
    similarity: metric -> target -> source -> similarity (where both embeddings exist).
  """

  spec: study_lib.StudySpec
  scores: dict[str, float]
  missing: list[str]
  similarity: dict[str, dict[str, dict[str, float]]]

  def score(self, run_id: str) -> Optional[float]:
    return self.scores.get(run_id)


def collect(study_dir: epath.PathLike) -> Collected:
  """Reads every finished run's score and every embedding of a study (local or gs://)."""
  from spot.library import similarity  # pylint: disable=g-import-not-at-top
  study_dir = epath.Path(study_dir)
  spec = study_lib.read_spec(study_dir)
  scores, missing = {}, []
  for run in study_lib.plan_runs(spec):
    value = study_lib.run_score(study_dir, run, spec.score_metric)
    if value is None:
      missing.append(run.run_id)
    else:
      scores[run.run_id] = value
  embeddings = {}
  for task in dict.fromkeys(spec.all_sources + spec.targets):
    try:
      embeddings[task] = study_lib.task_embedding(study_dir, spec, task)
    except FileNotFoundError:
      pass
  sims: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METRICS}
  for metric in METRICS:
    for t in spec.targets:
      if t in embeddings:
        sims[metric][t] = {s: similarity.similarity(embeddings[t], embeddings[s], metric)
                           for s in spec.candidates(t) if s in embeddings}
  return Collected(spec, scores, missing, sims)


# --------------------------------------------------------------- pure maths


def rer(baseline: float, transfer: float) -> Optional[float]:
  """(err_b - err_t) / err_b with err = 100 - score; None when the baseline is perfect."""
  err_b, err_t = 100.0 - baseline, 100.0 - transfer
  return None if err_b <= 0 else (err_b - err_t) / err_b


def mean_std(values: Sequence[float]) -> Optional[dict[str, Any]]:
  """{"mean", "std" (population, 0 for one value), "n"} or None for no values."""
  if not values:
    return None
  a = np.asarray(values, np.float64)
  return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def pearson(x: Sequence[float], y: Sequence[float]) -> Optional[dict[str, float]]:
  """{"r", "p", "n"} of scipy.stats.pearsonr; None with under 3 points or a constant side."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  r, p = stats.pearsonr(x, y)
  return {"r": float(r), "p": float(p), "n": int(x.size)}


def best_of_top_k(ranked: Sequence[str], scores: Mapping[str, float], k: int
                  ) -> Optional[float]:
  """The best score among the first k ranked sources that have one (None if none)."""
  values = [scores[s] for s in ranked[:k] if s in scores]
  return max(values) if values else None


def eliminated_fraction(baseline: float, oracle: float, by_k: Mapping[int, float],
                        num_sources: int, kept: float = GAIN_KEPT) -> Optional[dict[str, Any]]:
  """{"k", "fraction", "gain_kept"}: the smallest k keeping `kept` of the oracle's gain.

  None when the oracle gains nothing over the baseline (nothing to keep).
  """
  gain = oracle - baseline
  if gain <= 0:
    return None
  for k in sorted(by_k):
    if by_k[k] - baseline >= kept * gain - 1e-9:
      return {"k": int(k), "fraction": 1.0 - min(k, num_sources) / num_sources,
              "gain_kept": (by_k[k] - baseline) / gain}
  return None


# ------------------------------------------------------------------ tables


def _transfer_id(source: str, target: str, seed: int) -> str:
  return f"transfers/{source}__{target}/seed{seed}"


def grid(c: Collected) -> dict[str, Any]:
  """Per target: baseline and each source's score (mean +- std over seeds) and RER."""
  out = {}
  for t in c.spec.targets:
    base = [c.score(f"baselines/{t}/seed{k}") for k in c.spec.seeds]
    base_ms = mean_std([v for v in base if v is not None])
    row = {"baseline": base_ms, "partial": None in base, "sources": {}}
    for s in c.spec.candidates(t):
      vals = [c.score(_transfer_id(s, t, k)) for k in c.spec.seeds]
      ms = mean_std([v for v in vals if v is not None])
      cell = {"score": ms, "partial": None in vals, "rer": None}
      if ms is not None and base_ms is not None:
        cell["rer"] = rer(base_ms["mean"], ms["mean"])
        cell["difference"] = ms["mean"] - base_ms["mean"]
      row["sources"][s] = cell
      row["partial"] = row["partial"] or cell["partial"]
    out[t] = row
  return out


def correlations(c: Collected, table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """metric -> target -> {"points": [[source, similarity, rer]], "pearson": ...}."""
  out: dict[str, dict[str, Any]] = {}
  for metric in METRICS:
    out[metric] = {}
    for t, row in table.items():
      sims = c.similarity[metric].get(t, {})
      points = [[s, sims[s], cell["rer"]] for s, cell in row["sources"].items()
                if s in sims and cell["rer"] is not None]
      out[metric][t] = {"points": points,
                        "pearson": pearson([p[1] for p in points], [p[2] for p in points])}
  return out


def _ks(spec: study_lib.StudySpec) -> list[int]:
  n = len(spec.all_sources)
  return sorted({k for k in spec.top_ks if k <= n} | {n})


def retrieval(c: Collected) -> dict[str, Any]:
  """The retrieval table: rows of mean +- std over seeds of the mean over targets.

  Rows: baseline, oracle, best of top-k for each k, weighted average, mixture.
  Per seed, a target enters a row only when all the row's runs are finished;
  a row missing any (seed, target) is marked partial.
  """
  spec = c.spec
  ks = _ks(spec)
  names = (["baseline", "oracle"] + [f"best_of_top_{k}" for k in ks]
           + (["weighted_average"] if spec.weighted_k else [])
           + (["mixture"] if spec.mixture_k else []))
  per_seed: dict[str, list[float]] = {n: [] for n in names}
  partial = {n: False for n in names}
  per_target: dict[str, dict[str, dict[int, float]]] = {n: {} for n in names}
  for seed in spec.seeds:
    values: dict[str, list[float]] = {n: [] for n in names}
    for t in spec.targets:
      cands = spec.candidates(t)
      sims = c.similarity[spec.metric].get(t, {})
      ranked = sorted((s for s in cands if s in sims), key=lambda s: (-sims[s], s))
      scores = {s: c.score(_transfer_id(s, t, seed)) for s in cands}
      complete = all(v is not None for v in scores.values()) and len(ranked) == len(cands)
      scores = {s: v for s, v in scores.items() if v is not None}
      row = {"baseline": c.score(f"baselines/{t}/seed{seed}"),
             "oracle": max(scores.values()) if complete and scores else None,
             "weighted_average": c.score(f"retrieval/weighted_average/{t}/seed{seed}"),
             "mixture": c.score(f"retrieval/mixture/{t}/seed{seed}")}
      for k in ks:
        row[f"best_of_top_{k}"] = best_of_top_k(ranked, scores, k) if complete else None
      for n in names:
        if row[n] is None:
          partial[n] = True
        else:
          values[n].append(row[n])
          per_target[n].setdefault(t, {})[seed] = row[n]
    for n in names:
      if values[n]:
        per_seed[n].append(float(np.mean(values[n])))
  rows = {n: {"value": mean_std(per_seed[n]), "partial": partial[n],
              "per_target": per_target[n]} for n in names}
  out: dict[str, Any] = {"metric": spec.metric, "ks": ks, "rows": rows,
                         "eliminated": None}
  base, oracle = rows["baseline"]["value"], rows["oracle"]["value"]
  by_k = {k: rows[f"best_of_top_{k}"]["value"]["mean"] for k in ks
          if rows[f"best_of_top_{k}"]["value"] is not None}
  if base is not None and oracle is not None and by_k:
    out["eliminated"] = eliminated_fraction(base["mean"], oracle["mean"], by_k,
                                            len(spec.all_sources))
  return out


def results(c: Collected) -> dict[str, Any]:
  """Every number of the report (what results.json holds)."""
  table = grid(c)
  return {"spec": c.spec.to_json(), "missing": c.missing, "excluded": c.spec.excluded(),
          "grid": table, "similarity": c.similarity, "correlation": correlations(c, table),
          "retrieval": retrieval(c),
          "runs": {"finished": len(c.scores), "total": len(c.scores) + len(c.missing)}}


def check_consistency(r: Mapping[str, Any]) -> list[str]:
  """The tables' invariants over complete rows; returns what fails (empty: all hold).

  Oracle >= best of top-k for every k; best of top-k never falls as k grows;
  best of top-k at k = all sources equals the oracle; each RER has the sign of
  its score difference.
  """
  problems = []
  ret = r["retrieval"]
  rows, ks = ret["rows"], ret["ks"]
  for t, seeds in rows["oracle"]["per_target"].items():
    for seed, oracle in seeds.items():
      prev = -np.inf
      for k in ks:
        v = rows[f"best_of_top_{k}"]["per_target"].get(t, {}).get(seed)
        if v is None:
          continue
        if v > oracle + 1e-9:
          problems.append(f"{t} seed {seed}: best of top-{k} {v} exceeds the oracle {oracle}")
        if v < prev - 1e-9:
          problems.append(f"{t} seed {seed}: best of top-{k} {v} fell below {prev}")
        prev = v
      last = rows[f"best_of_top_{ks[-1]}"]["per_target"].get(t, {}).get(seed)
      if last is not None and abs(last - oracle) > 1e-9:
        problems.append(f"{t} seed {seed}: best of all {last} differs from the oracle {oracle}")
  for t, row in r["grid"].items():
    for s, cell in row["sources"].items():
      if cell["rer"] is not None and np.sign(cell["rer"]) != np.sign(cell["difference"]):
        problems.append(f"{s} -> {t}: RER {cell['rer']} and difference {cell['difference']}")
  return problems


# ------------------------------------------------------------------ writing

REPORT_MD = "report.md"
RESULTS_JSON = "results.json"
HEATMAP_PNG = "plots/rer_heatmap.png"


def scatter_png(target: str, metric: str) -> str:
  return f"plots/similarity_{metric}_{target}.png"


def _ms(value: Optional[Mapping[str, Any]], digits: int = 1) -> str:
  if value is None:
    return "-"
  return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _pct(value: Optional[float]) -> str:
  return "-" if value is None else f"{100.0 * value:+.1f}%"


def _md_table(rows: Sequence[Sequence[str]]) -> str:
  head, *body = rows
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def grid_table(r: Mapping[str, Any]) -> str:
  """Markdown: per target, baseline, then each source's score (mean ± std) and RER."""
  sources = list(r["spec"]["sources"]) + list(r["spec"]["library_sources"])
  rows = [["target", "baseline"] + sources]
  for t, row in r["grid"].items():
    cells = []
    for s in sources:
      cell = row["sources"].get(s)
      cells.append("(self)" if cell is None else
                   f"{_ms(cell['score'])} ({_pct(cell['rer'])})" + ("*" if cell["partial"] else ""))
    rows.append([t + (" *partial*" if row["partial"] else ""), _ms(row["baseline"])] + cells)
  return _md_table(rows)


def retrieval_table(r: Mapping[str, Any]) -> str:
  """Markdown: the retrieval rows (mean ± std over seeds of the mean over targets)."""
  labels = {"baseline": "baseline (no transfer)", "oracle": "oracle (best of all sources)",
            "weighted_average": f"top-{r['spec']['weighted_k']} weighted average",
            "mixture": f"top-{r['spec']['mixture_k']} multi-task mixture"}
  rows = [["method", "score", "seeds"]]
  for name, row in r["retrieval"]["rows"].items():
    label = labels.get(name) or f"best of top-{name.rsplit('_', 1)[1]}"
    n = row["value"]["n"] if row["value"] else 0
    rows.append([label + (" *partial*" if row["partial"] else ""), _ms(row["value"]), str(n)])
  return _md_table(rows)


def headline(r: Mapping[str, Any]) -> str:
  """One sentence: the search space eliminated at >= 90% of the oracle's gain."""
  e = r["retrieval"]["eliminated"]
  if e is None:
    return (f"No k of the table keeps {GAIN_KEPT:.0%} of the oracle's gain over the baseline "
            "(or the oracle gains nothing), so no search space is eliminated.")
  return (f"Best of top-{e['k']} keeps {e['gain_kept']:.0%} of the oracle's gain over the "
          f"baseline, eliminating {e['fraction']:.0%} of the source search space.")


def write_report(study_dir: epath.PathLike, out: Optional[epath.PathLike] = None
                 ) -> dict[str, Any]:
  """Collects the finished runs of `study_dir` and writes report.md, results.json, plots/.

  Returns the results (what results.json holds) with "files": the paths written.
  """
  from spot import io as spot_io  # pylint: disable=g-import-not-at-top
  from spot.workflows import study_plots  # pylint: disable=g-import-not-at-top
  study_dir = epath.Path(study_dir)
  out = epath.Path(out) if out else study_dir / "report"
  (out / "plots").mkdir(parents=True, exist_ok=True)
  c = collect(study_dir)
  r = results(c)
  files = {}
  png, _, _ = study_plots.heatmap(r["grid"], list(c.spec.all_sources))
  spot_io.write_bytes_atomic(out / HEATMAP_PNG, png)
  files["heatmap"] = HEATMAP_PNG
  scatters = []
  for metric in METRICS:
    for t, corr in r["correlation"][metric].items():
      rel = scatter_png(t, metric)
      spot_io.write_bytes_atomic(out / rel, study_plots.scatter(t, metric, corr["points"],
                                                                corr["pearson"]))
      scatters.append((t, metric, rel, corr["pearson"]))
  files["scatters"] = [s[2] for s in scatters]
  r["files"] = files
  spot_io.write_text_atomic(out / RESULTS_JSON, json_text(r))
  spot_io.write_text_atomic(out / REPORT_MD, markdown(r, scatters))
  return r


def json_text(r: Mapping[str, Any]) -> str:
  import json  # pylint: disable=g-import-not-at-top
  return json.dumps(r, indent=2, sort_keys=True, allow_nan=False) + "\n"


def markdown(r: Mapping[str, Any], scatters: Sequence[tuple[str, str, str, Any]]) -> str:
  """The report's Markdown (links relative to the report folder)."""
  spec = r["spec"]
  md = ["# Task-transferability study", "",
        f"{len(spec['sources']) + len(spec['library_sources'])} source(s) x {len(spec['targets'])} target(s), seeds "
        f"{', '.join(map(str, spec['seeds']))}; {r['runs']['finished']} of "
        f"{r['runs']['total']} runs finished. Scores are 0..100 (mean ± std over seeds); "
        "RER = (err_baseline - err_transfer) / err_baseline with err = 100 - score.", ""]
  if r["excluded"]:
    md += [f"Excluded from their own candidates (both source and target): "
           f"{', '.join(r['excluded'])}.", ""]
  if r["missing"]:
    shown = ", ".join(f"`{m}`" for m in r["missing"][:20])
    more = f" and {len(r['missing']) - 20} more" if len(r["missing"]) > 20 else ""
    md += [f"**Partial report**: {len(r['missing'])} run(s) not finished: {shown}{more}. "
           "Rows marked *partial* (cells marked *) use only the finished runs.", ""]
  md += ["## Retrieval", "", f"Sources ranked by `{r['retrieval']['metric']}` similarity of "
         "task embeddings.", "", retrieval_table(r), "", headline(r), "",
         "## Transfers (score and RER)", "", grid_table(r), "",
         f"![RER heatmap]({HEATMAP_PNG})", "", "## Similarity against transfer", ""]
  rows = [["target", "metric", "Pearson r", "p-value", "points", "plot"]]
  for t, metric, rel, p in scatters:
    rows.append([t, metric, "-" if p is None else f"{p['r']:.3f}",
                 "-" if p is None else f"{p['p']:.3g}", str(p["n"] if p else "-"),
                 f"[png]({rel})"])
  md += [_md_table(rows), ""]
  if scatters:
    md += [f"![similarity vs RER]({scatters[0][2]})", ""]
  md += [f"Every number: [{RESULTS_JSON}]({RESULTS_JSON}).", ""]
  return "\n".join(md)
