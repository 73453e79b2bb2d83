"""xGen end to end on local files: factorized prompts trained on language x task
combinations, recombined for an unseen pair, scored and reported."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import seqio

from spot import prompts
from spot.models import get_config
from spot.train import data as data_lib, infer as infer_lib, trainer
from spot.train.models import EncoderDecoderModel
from spot.xgen import languages as langs

from tests.xgen.conftest import tatoeba_dir, wikilingua_dir

pytestmark = pytest.mark.filterwarnings("ignore")


def test_factorized_prompts_train_recombine_score_report(shared_data, spm_model, tmp_path):
  from spot.tasks import wikilingua
  from spot.xgen import report as xreport
  from spot.xgen.metrics import score

  vocab = seqio.SentencePieceVocabulary(spm_model, extra_ids=100)
  wikilingua.register_wikilingua(str(wikilingua_dir(shared_data)), vocab, ["en", "th"],
                                 name_prefix="fx_", spm=spm_model)
  wikilingua.register_unsupervised(["en", "th"], str(tatoeba_dir(shared_data)),
                                   vocabulary=vocab, tasks=("span_corruption",),
                                   factorized_tasks=("span_corruption",), name_prefix="fx_")
  # Every language x task combination but (th, summarization), which is left for inference.
  train_mix = "fx_factorized_train"
  if train_mix in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(train_mix)
  seqio.MixtureRegistry.add(train_mix, [("fx_wikilingua_en", 1.0),
                                        ("fx_xgen_span_corruption_en", 1.0),
                                        ("fx_xgen_span_corruption_th", 1.0)])

  config = get_config("t5_1_1_tiny", dropout_rate=0.0).replace(
      vocab_size=vocab.vocab_size, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
  factory = functools.partial(prompts.FactorizedPrompt, num_languages=len(langs.LANGUAGE_IDS),
                              num_tasks=len(langs.TASK_IDS), language_length=2, task_length=2)
  model = EncoderDecoderModel(config, factory, vocab)
  lengths = {"inputs": 64, "targets": 16}
  result = trainer.train(
      model=model, train_dataset_cfg=data_lib.DatasetConfig(train_mix, lengths, batch_size=8),
      model_dir=str(tmp_path / "run"), train_steps=12, initial_checkpoint_path="random",
      log_every=4)
  assert len(result.losses) == 3 and all(np.isfinite(l) for _, l in result.losses)

  from spot.train import state as state_lib
  params, _ = state_lib.params_from_run(model, str(tmp_path / "run"))
  table = params["encoder"]["prompt"]
  init = state_lib.initial_params(model, "random")["encoder"]["prompt"]
  th, en = langs.language_id("th"), langs.language_id("en")
  summ, sc = langs.task_id("summarization"), langs.task_id("span_corruption")
  # Trained rows moved; rows of languages/tasks never seen did not.
  for table_name, row in (("language_prompts", th), ("language_prompts", en),
                          ("task_prompts", summ), ("task_prompts", sc)):
    assert not np.allclose(table[table_name][row], init[table_name][row]), (table_name, row)
  unseen = langs.language_id("fr")
  np.testing.assert_allclose(table["language_prompts"][unseen], init["language_prompts"][unseen],
                             atol=1e-4)  # only Adafactor's weight decay touches it

  # Inference on the unseen pair: Thai language sub-prompt + summarization task sub-prompt.
  out = infer_lib.infer(
      model=model, dataset_cfg=data_lib.DatasetConfig("fx_wikilingua0_th", lengths,
                                                      split="validation", batch_size=2,
                                                      shuffle=False),
      output_dir=str(tmp_path / "infer"), initial_checkpoint_path=None,
      restore_model_dir=str(tmp_path / "run"), max_decode_length=8)
  rows = [json.loads(l) for l in open(out)]
  assert rows and all(r["prompt_inputs"] == {"language_id": th, "task_id": summ} for r in rows)

  scores = score([r["prediction"] for r in rows], [r["targets"] for r in rows], "th", spm_model)
  assert set(scores) == {"sp_rouge1", "sp_rouge2", "sp_rougeL", "lid_en", "lid_th", "ascii",
                         "unk_rate"}
  assert scores["unk_rate"] == 0.0  # the multilingual model covers Thai (byte fallback)
  xreport.write_run_scores(str(tmp_path / "run"), {"th": scores}, size="tiny",
                           method="factorized", prompt_length=4)
  from spot.xgen.cli import main as xgen_main
  assert xgen_main(["report", "--runs", str(tmp_path / "run"), "--out",
                    str(tmp_path / "report")]) == 0
  md = (tmp_path / "report" / "report.md").read_text()
  assert "factorized" in md and "th" in md
