"""xGen: zero-shot cross-lingual generation (Vu et al., 2022) metrics and reports.

`spot.xgen.metrics` scores outputs (SP-ROUGE, LID_lang, ASCII); `spot.xgen.report`
records finished runs and builds the paper's table; `spot xgen score|report`
is the command line. SeqIO tasks live in `spot.tasks.wikilingua`, built from
`spot.xgen.sources` and `spot.xgen.preprocessors` (which import TensorFlow, so
they are not imported here).
"""

from spot.xgen.languages import LANGUAGE_IDS, TASK_IDS, WIKILINGUA_CODES
from spot.xgen.metrics import (MT5_SPM, UNK_RATE_WARN, UnknownPiecesWarning, ascii_metric,
                               ascii_score, lid, lid_metric, score, sp_rouge, sp_rouge_metric,
                               unk_rate, xgen_metrics)
from spot.xgen.report import (SCORES_FILE, find_runs, read_run, scores_by_language,
                              write_report, write_run_scores)

__all__ = [
    "LANGUAGE_IDS", "MT5_SPM", "SCORES_FILE", "TASK_IDS", "UNK_RATE_WARN", "UnknownPiecesWarning",
    "WIKILINGUA_CODES", "ascii_metric", "ascii_score", "find_runs", "lid", "lid_metric",
    "read_run", "score", "sp_rouge", "scores_by_language", "sp_rouge_metric", "unk_rate",
    "write_report", "write_run_scores", "xgen_metrics",
]
