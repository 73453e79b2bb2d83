"""The demo's small transferability study: every study source -> every target.

The demo has already trained what a study needs besides the transfers: the
source prompts (the library), each target's baseline from the fixed
initialisation (its `random` run) and every task embedding. This adds one
run per (source, target) pair from the source's prompt, reusing the
`retrieved` run where it started from that source, and hands the scores to
`spot.workflows.study_report`, which computes the tables `spot study report`
writes (one seed: the demo's).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from etils import epath

from spot import io as spot_io
from spot.demo import workflow
from spot.workflows import study as study_lib
from spot.workflows import study_plots, study_report

HEATMAP = "plots/study_rer_heatmap.png"


def scatter_plot(target: str) -> str:
  return f"plots/study_similarity_{target}.png"


def spec(cfg: Any, seed: int) -> study_lib.StudySpec:
  """The study of a demo preset: `cfg.study_skills` (domain "a") x the preset's targets."""
  from spot.tasks import synthetic  # pylint: disable=g-import-not-at-top
  sources = tuple(synthetic.task_name(s, synthetic.SOURCE_DOMAIN) for s in cfg.study_skills)
  return study_lib.StudySpec(sources=sources, targets=tuple(cfg.targets), seeds=(seed,),
                             source_steps=cfg.source_steps, target_steps=cfg.target_steps,
                             embedding_step=cfg.embedding_step, top_ks=(1, 2, 3),
                             weighted_k=0, mixture_k=0)


def run(flow: workflow.Workflow, cfg: Any, seed: int, sources: Sequence[workflow.RunRecord],
        targets: Sequence[workflow.TargetOutcome], log: Callable[[str], None]
        ) -> study_report.Collected:
  """Trains the missing transfers; returns the study's scores and similarities."""
  from spot.library import similarity  # pylint: disable=g-import-not-at-top
  s = spec(cfg, seed)
  by_task = {r.task: r for r in sources}
  lib = flow.library()
  scores, total = {}, len(s.targets) * len(s.sources)
  done = 0
  for t in targets:
    scores[f"baselines/{t.task}/seed{seed}"] = t.runs["random"].final
    for source in s.candidates(t.task):
      done += 1
      retrieved = t.runs["retrieved"]
      if retrieved.source == source:
        record = retrieved  # the same run: same init, task, steps and seed
      else:
        log(f"study {done}/{total}: {t.task} from the {source} prompt")
        record = flow.train_prompt(f"study_{source}__{t.task}", t.task, cfg.target_steps,
                                   "transfer", init=lib.prompt(source))
      scores[f"transfers/{source}__{t.task}/seed{seed}"] = record.final
  embeddings = {r.task: flow.early_prompt(r) for r in sources}
  sims = {m: {t.task: {src: similarity.similarity(flow.early_prompt(t.runs["random"]),
                                                   embeddings[src], m)
                       for src in s.candidates(t.task)} for t in targets}
          for m in study_report.METRICS}
  return study_report.Collected(s, scores, [], sims)


def headline(results: dict[str, Any]) -> str:
  return study_report.headline(results)


def write(out: epath.Path, collected: study_report.Collected) -> tuple[dict[str, Any], list[str]]:
  """Plots and the report section of the study; returns (its results, Markdown lines)."""
  r = study_report.results(collected)
  png, _, _ = study_plots.heatmap(r["grid"], list(collected.spec.sources))
  spot_io.write_bytes_atomic(out / HEATMAP, png)
  corr = r["correlation"]["avg_tokens"]
  shown = max(corr, key=lambda t: (corr[t]["pearson"] or {"r": -2.0})["r"])  # the clearest
  spot_io.write_bytes_atomic(out / scatter_plot(shown), study_plots.scatter(
      shown, "avg_tokens", corr[shown]["points"], corr[shown]["pearson"]))
  pear = lambda t: ("-" if corr[t]["pearson"] is None else
                    f"{corr[t]['pearson']['r']:.2f} (p {corr[t]['pearson']['p']:.2g})")
  lines = [
      "## Transferability study",
      "",
      f"Every study source ({', '.join(collected.spec.sources)}) transferred to every target, "
      f"{collected.spec.target_steps} steps each (seed {collected.spec.seeds[0]}); the "
      "`retrieved` runs above are reused. RER = (err_baseline - err_transfer) / err_baseline "
      "with err = 100 - score; the baseline is the target's random run. `spot study run` "
      "does the same on any tasks and seeds (docs/study.md).",
      "",
      study_report.retrieval_table(r),
      "",
      study_report.headline(r),
      "",
      f"![RER heatmap]({HEATMAP})",
      "",
      "Similarity (avg_tokens) against RER, Pearson r per target: "
      + ", ".join(f"{t} {pear(t)}" for t in corr) + ".",
      "",
      f"![similarity vs RER, {shown}]({scatter_plot(shown)})",
      "",
  ]
  return r, lines
