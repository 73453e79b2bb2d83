"""Finished xGen runs on disk, and the paper's table built from them.

A finished run is a directory (a T5X-style `model_dir`, local or gs://) that
holds `xgen_scores.json`:

    {"size": "small", "method": "pt", "prompt_length": 100,   # required metadata
     ...any other metadata (seed, step, checkpoint, ...),
     "scores": {"th": {"sp_rouge1": .., "sp_rouge2": .., "sp_rougeL": ..,
                       "lid_en": .., "lid_th": .., "ascii": ..}, ...}}

`scores` maps a WikiLingua language code to the dict `metrics.score` returns
for outputs in that language. `write_xgen_scores` writes it from a run's final
evaluation (the run files pass it to `spot train` and `spot eval` as a metrics
writer) through `write_run_scores`; `spot xgen score --run-dir` does too. `write_report` turns
runs into Markdown and CSV tables (size x method -> SP-ROUGE, LID_en,
LID_target per language) and a PNG plot of SP-ROUGE against LID_target.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from etils import epath

from spot import errors
from spot import io as spot_io
from spot.xgen import languages

SCORES_FILE = "xgen_scores.json"
META_KEYS = ("size", "method", "prompt_length")
REQUIRED_SCORES = ("sp_rougeL", "lid_en")
SEARCH_DEPTH = 3
SIZE_ORDER = ("tiny", "small", "base", "large", "xl", "xxl")
CSV_COLUMNS = ("run", "size", "method", "prompt_length", "lang", "sp_rouge1", "sp_rouge2",
               "sp_rougeL", "lid_en", "lid_target", "ascii")
# (title, per-language key, what it measures) for each Markdown table.
TABLES = (
    ("SP-ROUGE", "sp_rougeL", "ROUGE-L F1 over SentencePiece pieces"),
    ("LID_en", "lid_en", "Mean cld3 confidence that the output is English"),
    ("LID_target", "lid_target", "Mean cld3 confidence that the output is in the target language"),
    ("ASCII", "ascii", "Mean share of ASCII characters per output"),
)

_MARKERS = ("v", "o", "s", "^", "D", "P", "X")
PathLike = Union[str, epath.PathLike]


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run: where it is, its metadata and its per-language scores."""
  path: str
  size: str
  method: str
  prompt_length: Optional[int]
  scores: Mapping[str, Mapping[str, float]]
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def key(self) -> tuple[str, str, Optional[int]]:
    return (self.size, self.method, self.prompt_length)


# ------------------------------------------------------------- writing scores


def _check_scores(scores: Mapping[str, Mapping[str, float]], where: str) -> dict:
  if not isinstance(scores, Mapping) or not scores:
    raise errors.DataError(f"{where}: scores must map language codes to score dicts, got "
                           f"{scores!r}")
  checked = {}
  for lang, values in scores.items():
    languages.check_language(lang)
    needed = REQUIRED_SCORES + (f"lid_{lang}",)
    missing = [k for k in needed if k not in values]
    if missing:
      raise errors.DataError(f"{where}: scores for {lang!r} lack {missing}; pass the dict that "
                             "spot.xgen.metrics.score returns")
    for k, v in values.items():
      if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise errors.DataError(f"{where}: {lang}.{k} = {v!r} is not a finite number")
    checked[lang] = {k: float(v) for k, v in values.items()}
  return checked


def scores_by_language(task_metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict]:
  """Per-language scores from SeqIO evaluation results (task name -> metrics).

  A task's language is read off its metrics: the `lid_<xx>` key besides
  `lid_en` (only `lid_en`: English). Tasks without SP-ROUGE are not xGen
  tasks and are skipped; two tasks in one language are an error.
  """
  out: dict[str, dict] = {}
  for task, values in task_metrics.items():
    if "sp_rougeL" not in values:
      continue
    others = [k[len("lid_"):] for k in values if k.startswith("lid_") and k != "lid_en"]
    if len(others) > 1:
      raise ValueError(f"task {task!r} has LID scores for several languages: {others}")
    lang = others[0] if others else "en"
    if lang in out:
      raise ValueError(f"two evaluated tasks are in {lang!r}; pass one task per language")
    out[lang] = {k: float(v) for k, v in values.items()}
  return out


def write_run_scores(run_dir: PathLike, scores: Mapping[str, Mapping[str, float]], *,
                     size: str, method: str, prompt_length: Optional[int] = None,
                     **meta: Any) -> epath.Path:
  """Records xGen scores in `run_dir/xgen_scores.json`, marking the run finished.

  Scores for languages already in the file are replaced, others kept, so
  per-language evaluations can be written one at a time. The metadata must
  match what the file already holds.

  Args:
    run_dir: the run's directory (created if missing).
    scores: language code -> `metrics.score(...)` dict for that language.
    size: model size ("small", "base", "large", "xl", "xxl", ...).
    method: e.g. "mt" (model tuning), "pt" (prompt tuning), "mix_unsup", "fp", "sup".
    prompt_length: prompt length, None for model tuning.
    **meta: any further JSON metadata (seed, step, checkpoint, ...).

  Returns:
    The path of the scores file.
  """
  path = epath.Path(run_dir) / SCORES_FILE
  scores = _check_scores(scores, str(path))
  header = {"size": str(size), "method": str(method),
            "prompt_length": None if prompt_length is None else int(prompt_length), **meta}
  merged: dict[str, Any] = {"scores": {}}
  if path.exists():
    merged = _read_json(path)
    for key in META_KEYS:
      if merged.get(key) != header[key]:
        raise errors.UsageError(f"{path} holds {key}={merged.get(key)!r}, not {header[key]!r}; "
                                "write each run to its own directory")
  merged.update(header)
  merged["scores"] = {**merged.get("scores", {}), **scores}
  path.parent.mkdir(parents=True, exist_ok=True)
  spot_io.write_text_atomic(path, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
  return path


# ---------------------------------------------------------------- reading runs


def _read_json(path: epath.Path) -> dict:
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{path} is not valid JSON ({e}); rewrite it with "
                           "spot.xgen.report.write_run_scores or remove it") from e
  if not isinstance(data, dict):
    raise errors.DataError(f"{path} must hold a JSON object; rewrite it with "
                           "spot.xgen.report.write_run_scores or remove it")
  return data


def read_run(run_dir: PathLike) -> Run:
  """The finished run in `run_dir`; raises if `xgen_scores.json` is missing or bad."""
  path = epath.Path(run_dir) / SCORES_FILE
  if not path.exists():
    raise errors.MissingInputError(f"{run_dir} is not a finished run: it has no {SCORES_FILE}")
  data = _read_json(path)
  missing = [k for k in ("size", "method", "scores") if k not in data]
  if missing:
    raise errors.DataError(f"{path} lacks {missing}; write it with "
                           "spot.xgen.report.write_run_scores")
  meta = {k: v for k, v in data.items() if k not in META_KEYS + ("scores",)}
  length = data.get("prompt_length")
  return Run(path=str(epath.Path(run_dir)), size=str(data["size"]), method=str(data["method"]),
             prompt_length=None if length is None else int(length),
             scores=_check_scores(data["scores"], str(path)), meta=meta)


def find_runs(paths: Iterable[PathLike]) -> tuple[list[Run], list[str]]:
  """Finished runs at or below each path, and the paths holding none.

  A path is a run directory itself, or a folder whose sub-folders, up to
  SEARCH_DEPTH levels down, are searched for `xgen_scores.json` (a fixed
  depth, because recursive globs are not available on GCS).
  """
  runs, empty = [], []
  for given in paths:
    root = epath.Path(given)
    if not root.exists():
      raise errors.MissingInputError(f"--runs {given}: no such directory; pass run directories "
                                     f"(holding {SCORES_FILE}) or folders of them")
    files = [root / SCORES_FILE] if (root / SCORES_FILE).exists() else sorted(
        f for depth in range(1, SEARCH_DEPTH + 1)
        for f in root.glob("/".join(["*"] * depth + [SCORES_FILE])))
    if not files:
      empty.append(str(given))
    runs += [read_run(f.parent) for f in files]
  return runs, empty


# ---------------------------------------------------------------------- tables


def _size_rank(size: str) -> tuple[int, str]:
  return (SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER), size)


def run_languages(runs: Sequence[Run]) -> list[str]:
  """Languages scored in any run, in the paper's order."""
  seen = {lang for run in runs for lang in run.scores}
  return [code for code in languages.WIKILINGUA_CODES if code in seen]


def _value(scores: Mapping[str, float], lang: str, key: str) -> Optional[float]:
  if key == "lid_target":
    key = f"lid_{lang}"
  return scores.get(key)


def _order(key: tuple[str, str, Optional[int]]) -> tuple:
  size, method, length = key
  return (_size_rank(size), method, length or 0)


def _groups(runs: Sequence[Run]) -> list[tuple[tuple[str, str, Optional[int]], list[Run]]]:
  """Runs grouped by (size, method, prompt length), in table order."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    groups.setdefault(run.key, []).append(run)
  return sorted(groups.items(), key=lambda kv: _order(kv[0]))


def rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
  """One CSV row per run and language (`lid_target` is LID of that language)."""
  out = []
  for run in sorted(runs, key=lambda r: (_order(r.key), r.path)):
    for lang in run_languages([run]):
      row = {"run": run.path, "size": run.size, "method": run.method,
             "prompt_length": "" if run.prompt_length is None else run.prompt_length,
             "lang": lang}
      for key in CSV_COLUMNS[5:]:
        value = _value(run.scores[lang], lang, key)
        row[key] = "" if value is None else round(value, 2)
      out.append(row)
  return out


def to_csv(runs: Sequence[Run]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows(runs))
  return buffer.getvalue()


def _mean(values: Sequence[float]) -> Optional[float]:
  return sum(values) / len(values) if values else None


def table(runs: Sequence[Run], key: str) -> tuple[list[str], list[list[str]]]:
  """Header and rows of one metric: size x method (x prompt length) by language.

  Runs with the same size, method and prompt length (e.g. seeds) are
  averaged; `avg` is the mean over the non-English languages of a row.
  """
  langs = run_languages(runs)
  header = ["size", "method", "prompt", "runs"] + langs + ["avg"]
  body = []
  for (size, method, length), members in _groups(runs):
    cells = [size, method, "" if length is None else str(length), str(len(members))]
    per_lang = {}
    for lang in langs:
      values = [v for r in members if lang in r.scores
                for v in [_value(r.scores[lang], lang, key)] if v is not None]
      per_lang[lang] = _mean(values)
      cells.append("" if per_lang[lang] is None else f"{per_lang[lang]:.1f}")
    average = _mean([v for lang, v in per_lang.items() if lang != "en" and v is not None])
    cells.append("" if average is None else f"{average:.1f}")
    body.append(cells)
  return header, body


def to_markdown(runs: Sequence[Run]) -> str:
  """The report: one table per metric (SP-ROUGE, LID_en, LID_target, ASCII)."""
  lines = ["# xGen report (WikiLingua-0)", "",
           f"{len(runs)} finished run(s). Scores are 0-100; `avg` is the mean over non-English "
           "languages; `runs` counts runs averaged in a row.", ""]
  for title, key, what in TABLES:
    header, body = table(runs, key)
    lines += [f"## {title}", "", f"{what}.", "",
              "| " + " | ".join(header) + " |",
              "|" + "|".join("---" if i < 2 else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines.append("")
  lines += ["## Runs", ""] + [f"- `{r.path}`: {r.size} / {r.method}"
                              + ("" if r.prompt_length is None else f" / {r.prompt_length}")
                              for r in runs]
  return "\n".join(lines) + "\n"


def plot(runs: Sequence[Run], path: PathLike) -> epath.Path:
  """Scatter of SP-ROUGE against LID_target, one series per size/method/prompt
  (one marker shape per size), each point labelled with its language."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(figsize=(8, 6))
  for (size, method, length), members in _groups(runs):
    xs, ys, labels = [], [], []
    for run in members:
      for lang, scores in run.scores.items():
        x, y = _value(scores, lang, "lid_target"), scores.get("sp_rougeL")
        if x is not None and y is not None:
          xs.append(x)
          ys.append(y)
          labels.append(lang)
    label = f"{size} {method}" + ("" if length is None else f" (P={length})")
    marker = _MARKERS[_size_rank(size)[0] % len(_MARKERS)]  # one shape per size
    axes.scatter(xs, ys, label=label, alpha=0.8, marker=marker)
    for x, y, lang in zip(xs, ys, labels):
      axes.annotate(lang, (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
  axes.set_xlabel("LID_target (cld3 confidence in the target language, 0-100)")
  axes.set_ylabel("SP-ROUGE (ROUGE-L over SentencePiece pieces, 0-100)")
  axes.set_title("xGen: summary quality vs. target-language fidelity")
  axes.set_xlim(-2, 102)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=120)
  plt.close(figure)
  out.write_bytes(buffer.getvalue())
  return out


def write_report(runs: Sequence[Run], out_dir: PathLike) -> dict[str, epath.Path]:
  """Writes `report.md`, `report.csv` and `sp_rouge_vs_lid.png` into `out_dir`."""
  if not runs:
    raise errors.DataError("no finished runs to report; a finished run is a directory holding "
                           f"{SCORES_FILE} (see spot.xgen.report.write_run_scores)")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"markdown": out / "report.md", "csv": out / "report.csv",
           "plot": out / "sp_rouge_vs_lid.png"}
  spot_io.write_text_atomic(paths["markdown"], to_markdown(runs))
  spot_io.write_text_atomic(paths["csv"], to_csv(runs))
  plot(runs, paths["plot"])
  return paths


def write_xgen_scores(summary: Any) -> Optional[epath.Path]:
  """`xgen_scores.json` for `spot xgen report`, when the summary's results hold xGen metrics.

  `summary` is a `spot.train.config.RunSummary` (results keyed "task/metric");
  runs whose tasks report no xGen metrics write nothing. Returns the path or None.
  """
  by_task: dict[str, dict] = {}
  for key, value in summary.results.items():
    task, _, metric = key.partition("/")
    if value is not None:
      by_task.setdefault(task, {})[metric] = value
  scores = scores_by_language(by_task)
  if not scores:
    return None
  meta = {"seed": summary.seed}
  if summary.step is not None:
    meta["step"] = summary.step
  return write_run_scores(summary.model_dir, scores, size=summary.model_size,
                          method=summary.method, prompt_length=summary.prompt_length or None,
                          **meta)
