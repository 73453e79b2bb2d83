"""Library entries of every method: a LoRA run's trained parameters and config stored and
read back, old prompt entries unchanged on disk, retrieval per method, and prompt
transfer refusing an entry it cannot apply."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest

from spot import peft
from spot.library import PromptLibrary, entry as entry_lib, retrieval, transfer
from spot.library.cli import main
from spot.library.errors import CorruptEntryError, MethodMismatchError

from tests import helpers

MODEL = "t5_1_1_tiny"
LORA = peft.LoraConfig(rank=2, alpha=4.0, targets=("q", "v"))


def _cli(*argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  rc = main([str(a) for a in argv], stdout=out, stderr=err)
  return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> pathlib.Path:
  """A 4-step LoRA run of the tiny random T5 1.1 (no prompt) on a tiny task."""
  import seqio
  from spot.models import get_config
  from spot.train.models import EncoderDecoderModel
  task = helpers.register_tiny_task("library_methods_task")
  model = EncoderDecoderModel(get_config("t5_1_1_tiny", dropout_rate=0.0), None,
                              seqio.PassThroughVocabulary(size=64, eos_id=1), peft=LORA)
  model_dir = tmp_path_factory.mktemp("lora_run")
  helpers.quick_train(model_dir, task, train_steps=4, model=model, trainable="lora",
                      method="lora")
  return model_dir


def _lora_params(dim: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"encoder/layers_0/attention/query/lora_a": rng.normal(size=(dim, 2)),
          "encoder/layers_0/attention/query/lora_b": rng.normal(size=(2, dim))}


def test_add_from_lora_model_dir_stores_its_parameters_and_config(lora_run, tmp_path):
  from spot.library import sources
  lib_path = tmp_path / "lib"
  rc, out, err = _cli("--library", lib_path, "--json", "add", "lora_src", "--from-model-dir",
                      lora_run, "--model", MODEL)
  assert rc == 0, err
  summary = json.loads(out)
  assert summary["method"] == "lora" and summary["prompt_shape"] is None
  want, step = sources.model_dir_trainable(str(lora_run))
  assert step == 4 and want and all("lora" in k for k in want)
  assert summary["param_shapes"] == {k: list(v.shape) for k, v in want.items()}
  lib = PromptLibrary(lib_path)
  entry = lib.entry("lora_src")
  assert entry.method == "lora" and entry.provenance.step == 4
  assert peft.from_dict(entry.peft) == LORA  # the run's config rebuilds
  got = lib.params("lora_src")
  assert set(got) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v.astype(np.float32), err_msg=k)
  assert any(np.abs(v).max() > 0 for k, v in got.items() if k.endswith("lora/b"))  # trained
  rc, out, _ = _cli("--library", lib_path, "list", "--method", "lora")
  assert rc == 0 and "lora_src" in out and "lora" in out
  rc, out, _ = _cli("--library", lib_path, "list", "--method", "prompt")
  assert rc == 0 and "lora_src" not in out


def test_add_from_a_lora_run_checkpoint_and_a_selective_run(lora_run, tmp_path):
  import seqio
  from spot.models import get_config
  from spot.train.models import EncoderDecoderModel
  lib_path = tmp_path / "lib"
  rc, out, err = _cli("--library", lib_path, "--json", "add", "from_ckpt", "--from-t5x",
                      lora_run / "checkpoints" / "4", "--model", MODEL)
  assert rc == 0, err
  assert json.loads(out)["method"] == "lora" and json.loads(out)["step"] == 4
  # LayerNorm-only tuning adds no module: run.json says "prompt" with other trainable regexes.
  task = helpers.register_tiny_task("library_methods_task")
  model = EncoderDecoderModel(get_config("t5_1_1_tiny", dropout_rate=0.0), None,
                              seqio.PassThroughVocabulary(size=64, eos_id=1))
  run = tmp_path / "layernorm_run"
  helpers.quick_train(run, task, train_steps=4, model=model, trainable="layernorm")
  rc, out, err = _cli("--library", lib_path, "--json", "add", "ln", "--from-model-dir", run,
                      "--model", MODEL)
  assert rc == 0, err
  shapes = json.loads(out)["param_shapes"]
  assert json.loads(out)["method"] == "selective" and shapes
  assert all("layer_norm" in k or "norm" in k for k in shapes), sorted(shapes)


def test_a_model_tuning_run_is_refused_naming_it_before_reading_a_checkpoint(tmp_path):
  run = tmp_path / "model_tuned"
  run.mkdir()
  (run / "run.json").write_text(json.dumps({"method": "prompt", "trainable": [".*"],
                                            "task": "t", "model_config": {"emb_dim": 8}}))
  for flag, where in (("--from-model-dir", run), ("--from-t5x", run / "checkpoint_4")):
    rc, _, err = _cli("--library", tmp_path / "lib", "add", "whole", flag, where,
                      "--model", MODEL)
    assert rc == 2 and f"{where} is a model-tuning run (TRAINABLE='all')" in err, err
  assert not (tmp_path / "lib" / "whole").exists()


def test_prompt_entries_are_written_as_before_and_old_entries_read(tmp_path, make_prompt):
  lib = PromptLibrary(tmp_path / "lib")
  lib.add("p", make_prompt(0), model=MODEL)
  d = json.loads((tmp_path / "lib/entries/p/entry.json").read_text())
  assert d["format"] == 1 and "method" not in d and "params" not in d and "peft" not in d
  assert sorted(p.name for p in (tmp_path / "lib/entries/p").iterdir()) == [
      "entry.json", "prompt.npy"]
  assert lib.entry("p").method == "prompt" and lib.entry("p").is_prompt
  np.testing.assert_array_equal(lib.params("p")[entry_lib.run_dir.PROMPT_VARIABLE],
                                make_prompt(0))


def test_peft_entry_round_trips_and_checks_its_files(lib, make_prompt):
  params = _lora_params()
  entry = lib.add_params("l", params, method="lora", peft=LORA.to_dict(),
                         model=entry_lib.ModelInfo(MODEL, embed_dim=4),
                         embeddings={"step_2": make_prompt(1, dim=4)})
  assert entry.to_json()["format"] == entry_lib.FORMAT_VERSION == 2
  assert lib.entry("l").param_shapes == {k: v.shape for k, v in params.items()}
  assert set(lib.files("l")) == {"entry.json", "embeddings/step_2.npy",
                                 "params/encoder.layers_0.attention.query.lora_a.npy",
                                 "params/encoder.layers_0.attention.query.lora_b.npy"}
  # A damaged parameter file makes the entry corrupt (skipped from rankings, named).
  f = lib.path / "entries/l/params/encoder.layers_0.attention.query.lora_b.npy"
  f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
  with pytest.raises(CorruptEntryError, match="lora_b"):
    lib.entry("l")


def test_add_params_refuses_a_prompt_method_and_a_missing_dim(lib):
  with pytest.raises(MethodMismatchError, match="add\\(\\)"):
    lib.add_params("x", _lora_params(), method="prompt", peft=None, model=MODEL)
  with pytest.raises(entry_lib.ModelMismatchError, match="embed_dim"):
    lib.add_params("x", _lora_params(), method="lora", peft=None, model=MODEL)


@pytest.fixture
def mixed(lib, make_prompt) -> PromptLibrary:
  """Prompt entries p0-p2 and LoRA entries l0-l1 of one model, all with task embeddings."""
  for i in range(3):
    lib.add(f"p{i}", make_prompt(i, dim=4), model=MODEL, task=f"task{i}")
  for i in range(2):
    lib.add_params(f"l{i}", _lora_params(seed=i), method="lora", peft=LORA.to_dict(),
                   model=entry_lib.ModelInfo(MODEL, embed_dim=4),
                   embeddings={"early": make_prompt(10 + i, dim=4)})
  lib.add_params("bare", _lora_params(seed=5), method="lora", peft=None,
                 model=entry_lib.ModelInfo(MODEL, embed_dim=4))  # no embedding: not ranked
  return lib


def test_rankings_compare_entries_of_one_method(mixed, make_prompt):
  query = make_prompt(20, dim=4)
  assert {n for n, _ in retrieval.rank(mixed, query)} == {"p0", "p1", "p2"}
  lora = retrieval.rank(mixed, query, method="lora")
  assert {n for n, _ in lora} == {"l0", "l1"}
  # The scores are the same similarity as within prompts: the metric is unchanged.
  from spot.library import similarity
  want = similarity.avg_tokens(query, mixed.embedding("l0", "early"))
  assert dict(lora)["l0"] == pytest.approx(want, abs=1e-6)
  assert [n for n, _ in retrieval.rank(mixed, "l0")] == ["l1"]  # its own method only
  assert {n for n, _ in retrieval.rank(mixed, "p0")} == {"p1", "p2"}
  with pytest.raises(MethodMismatchError, match="'l0' is of method 'lora'"):
    retrieval.rank(mixed, "l0", method="prompt")
  with pytest.raises(MethodMismatchError, match="adapter.*it has lora, prompt"):
    retrieval.rank(mixed, query, method="adapter")
  with pytest.raises(Exception, match="no task embedding"):
    retrieval.rank(mixed, "bare")
  names, m = retrieval.pairwise(mixed, method="lora")
  assert names == ["l0", "l1"] and m.shape == (2, 2)
  assert retrieval.pairwise(mixed)[0] == ["p0", "p1", "p2"]
  with pytest.raises(MethodMismatchError, match="lora, prompt"):
    retrieval.pairwise(mixed, names=["p0", "l0"])
  assert "bare" in mixed.names() and mixed.names(method="lora") == ["bare", "l0", "l1"]


def test_query_cli_filters_by_method(mixed, tmp_path, make_prompt):
  q = tmp_path / "q.npy"
  np.save(q, make_prompt(20, dim=4))
  rc, out, err = _cli("--library", mixed.path, "--json", "query", "--embedding", q,
                      "--method", "lora")
  assert rc == 0, err
  assert {r["name"] for r in json.loads(out)} == {"l0", "l1"}
  rc, _, err = _cli("--library", mixed.path, "query", "--entry", "l0", "--method", "prompt")
  assert rc == 3 and "'l0' is of method 'lora'" in err


def test_prompt_transfer_refuses_a_lora_entry_naming_it(mixed):
  with pytest.raises(MethodMismatchError, match="'l0' holds lora parameters.*method 'prompt'"):
    mixed.prompt("l0")
  with pytest.raises(MethodMismatchError, match="'l0'.*lora"):
    transfer.init_prompt(mixed, [("l0", 0.9)], "top1")
  with pytest.raises(MethodMismatchError, match="'l1'.*lora"):
    transfer.init_prompt(mixed, [("p0", 0.9), ("l1", 0.5)], "weighted_average")
  np.testing.assert_array_equal(transfer.init_prompt(mixed, [("p0", 0.9)]), mixed.prompt("p0"))


def test_from_library_initialiser_refuses_a_lora_entry_before_compute(mixed):
  import jax
  from spot.workflows.library_init import from_library
  init = from_library(str(mixed.path), "l0", "t5_1_1", "tiny")
  with pytest.raises(MethodMismatchError) as e:
    init(jax.random.PRNGKey(0), (5, 4))
  message = str(e.value)
  assert "'l0'" in message and "'lora'" in message and "--method prompt" in message
  assert "\n" not in message
  ok = from_library(str(mixed.path), "p0", "t5_1_1", "tiny")(jax.random.PRNGKey(0), (5, 4))
  np.testing.assert_array_equal(np.asarray(ok), mixed.prompt("p0"))


def test_archive_round_trips_a_lora_entry(mixed, tmp_path):
  rc, _, err = _cli("--library", mixed.path, "export", tmp_path / "a.tar.gz", "--entry", "l0")
  assert rc == 0, err
  rc, _, err = _cli("--library", tmp_path / "other", "import", tmp_path / "a.tar.gz")
  assert rc == 0, err
  other = PromptLibrary(tmp_path / "other")
  assert other.entry("l0").method == "lora"
  for k, v in mixed.params("l0").items():
    np.testing.assert_array_equal(other.params("l0")[k], v)


def test_spot_workflow_refuses_a_lora_mixture_entry_before_training(tmp_path, make_prompt):
  import types
  from spot.workflows.spot_transfer import SpotWorkflow
  lib = PromptLibrary(tmp_path / "library")
  lib.add_params("glue_mix", _lora_params(), method="lora", peft=LORA.to_dict(),
                 model=entry_lib.ModelInfo(MODEL, embed_dim=4))
  settings = types.SimpleNamespace(target_steps=2, eval_every=1, embedding_step=1)
  flow = SpotWorkflow(tmp_path, types.SimpleNamespace(mixture="glue_mix"), settings, 0,
                      lambda m: None, MODEL)
  trained = []
  flow.train_prompt = lambda *a, **k: trained.append(a)
  with pytest.raises(MethodMismatchError, match="'glue_mix' holds lora parameters"):
    flow.run_target("rte", 1, 1)
  assert not trained
