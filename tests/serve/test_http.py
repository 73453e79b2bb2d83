"""`spot serve` over real HTTP on 127.0.0.1: outputs, mixed batches, every error case."""

from __future__ import annotations

import concurrent.futures
import functools
import re
import time

import numpy as np
import pytest

from tests.serve.conftest import ENTRIES, MAX_DECODE_LENGTH, PROMPT_LENGTH

TEXTS = ("rte sentence1: The cat sat on the mat. sentence2: A cat sits.",
         "sst2 sentence: a gorgeous, witty film",
         "mrpc sentence1: He left. sentence2: He went away.",
         "hello world", "", "a b c d e f g")


def infer_predictions(engine, library, name, texts):
  """What `spot infer`'s decoding (evaluation.predict_examples on a PrefixPrompt model
  with the entry's prompt) predicts for `texts`."""
  from spot.prompts import modules
  from spot.train import evaluation
  from spot.train.models import EncoderDecoderModel
  model = EncoderDecoderModel(engine.config, prompt=functools.partial(
      modules.PrefixPrompt, length=PROMPT_LENGTH), vocabulary=engine.vocabulary)
  params = dict(engine.base_params)
  params["encoder"] = dict(params["encoder"], prompt={"prompt": {"prompt": library.prompt(name)}})
  tokens = [engine.tokenize(t) for t in texts]
  ids = np.zeros((len(tokens), max(map(len, tokens))), np.int32)
  for i, t in enumerate(tokens):
    ids[i, :len(t)] = t
  out = evaluation.predict_examples(model, params, {"encoder_input_tokens": ids}, 4,
                                    max_decode_length=MAX_DECODE_LENGTH)
  return [engine.detokenize(row) for row in out]


def generate(client, prompt, inputs, **extra):
  r = client.post("/v1/generate", json={"prompt": prompt, "inputs": inputs, **extra})
  assert r.status_code == 200, r.text
  return r.json()


def test_outputs_equal_infer_for_each_entry(client, engine, library):
  for name in ENTRIES:
    body = generate(client, name, list(TEXTS))
    assert body["prompt"] == name and body["model"] == "t5_1_1_tiny"
    texts = [o["text"] for o in body["outputs"]]
    assert texts == infer_predictions(engine, library, name, TEXTS), name
    assert all(o["input_tokens"] == len(engine.tokenize(t)) for o, t in zip(body["outputs"], TEXTS))
    assert body["timings"]["total_ms"] >= body["timings"]["compute_ms"] > 0


def test_entries_give_different_outputs(client):
  """The prompt reaches the model: three prompts do not all decode alike."""
  outs = {name: tuple(o["text"] for o in generate(client, name, list(TEXTS))["outputs"])
          for name in ENTRIES}
  assert len(set(outs.values())) > 1, outs


def test_single_input_gives_one_output(client):
  body = generate(client, ENTRIES[0], TEXTS[0])
  assert isinstance(body["outputs"], dict)
  assert body["outputs"]["text"] == generate(client, ENTRIES[0], [TEXTS[0]])["outputs"][0]["text"]


def test_concurrent_mixed_requests_equal_one_at_a_time(client, url, service):
  import httpx
  jobs = [(ENTRIES[i % 3], TEXTS[i % len(TEXTS)]) for i in range(36)]
  alone = {job: generate(client, *job)["outputs"]["text"] for job in set(jobs)}
  before = _metric(client.get("/metrics").text, "spot_serve_batch_prompts_sum")

  def one(job):
    with httpx.Client(base_url=url, timeout=120) as c:
      return job, c.post("/v1/generate", json={"prompt": job[0], "inputs": job[1]})

  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    results = list(pool.map(one, jobs))
  for job, r in results:
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["text"] == alone[job], job
  metrics = client.get("/metrics").text
  # Some batch mixed prompts: more prompts were counted than batches run.
  sizes = [r.json()["outputs"]["batch_size"] for _, r in results]
  assert max(sizes) > 1, sizes
  assert _metric(metrics, "spot_serve_batch_prompts_sum") > before


def test_score_gives_rank_classification(client, engine, library):
  from spot.prompts import modules
  from spot.train.models import EncoderDecoderModel
  targets = ["entailment", "not_entailment"]
  body = client.post("/v1/score", json={"prompt": ENTRIES[0], "inputs": list(TEXTS[:3]),
                                        "targets": targets}).json()
  model = EncoderDecoderModel(engine.config, prompt=functools.partial(
      modules.PrefixPrompt, length=PROMPT_LENGTH))
  params = dict(engine.base_params)
  params["encoder"] = dict(params["encoder"],
                           prompt={"prompt": {"prompt": library.prompt(ENTRIES[0])}})
  for text, out in zip(TEXTS[:3], body["outputs"]):
    cands = np.zeros((2, 8), np.int32)
    for j, t in enumerate(targets):
      ids = engine.tokenize(t)
      cands[j, :len(ids)] = ids
    tokens = np.asarray([engine.tokenize(text)], np.int32)
    want = np.asarray(model.score_candidates(params, {"encoder_input_tokens": tokens}, cands))[0]
    np.testing.assert_allclose(out["scores"], want, rtol=1e-4, atol=1e-4)
    assert out["best"] == int(np.argmax(want)) and out["label"] == targets[out["best"]]


def test_prompts_lists_entries_of_this_base_only(client):
  body = client.get("/v1/prompts").json()
  assert body["model"] == "t5_1_1_tiny"
  assert [p["name"] for p in body["prompts"]] == sorted(ENTRIES)
  assert all(p["prompt_shape"] == [PROMPT_LENGTH, 4] for p in body["prompts"])


def test_entry_added_while_running_is_servable(client, library, engine):
  name = "added_later"
  assert client.post("/v1/generate", json={"prompt": name, "inputs": "x"}).status_code == 404
  library.add(name, library.prompt(ENTRIES[1]), model=engine.model_name)
  try:
    assert name in [p["name"] for p in client.get("/v1/prompts").json()["prompts"]]
    got = generate(client, name, list(TEXTS[:2]))["outputs"]
    assert [o["text"] for o in got] == [o["text"] for o in
                                        generate(client, ENTRIES[1], list(TEXTS[:2]))["outputs"]]
  finally:
    library.remove(name)


def _error(r, status, field):
  assert r.status_code == status, r.text
  err = r.json()["error"]
  assert err["status"] == status and err["field"] == field, err
  assert len(err["message"]) > 20
  return err


def test_unknown_prompt_is_404_with_close_names(client):
  err = _error(client.post("/v1/generate", json={"prompt": "rte_promt", "inputs": "x"}),
               404, "prompt")
  assert err["close_names"][0] == "rte_prompt"
  assert "GET /v1/prompts" in _error(client.post("/v1/score", json={
      "prompt": "zzzz", "inputs": "x", "targets": ["a"]}), 404, "prompt")["message"]


def test_prompt_of_another_base_model_is_409(client):
  err = _error(client.post("/v1/generate", json={"prompt": "base_prompt", "inputs": "x"}),
               409, "prompt")
  assert "t5_1_1_lm100k_base" in err["message"] and "t5_1_1_tiny" in err["message"]


def test_entry_of_another_method_is_not_listed_and_is_409(client, library, engine):
  """A LoRA entry changes the model's weights, so one batched frozen model cannot serve it."""
  from spot.library.entry import ModelInfo
  d = engine.config.emb_dim
  library.add_params("lora_entry", {"encoder/layers_0/attention/query/lora/a": np.ones((d, 2)),
                                    "encoder/layers_0/attention/query/lora/b": np.ones((2, d))},
                     method="lora", peft=None, model=ModelInfo(engine.model_name, embed_dim=d))
  try:
    assert "lora_entry" not in [p["name"] for p in client.get("/v1/prompts").json()["prompts"]]
    for path, body in (("/v1/generate", {"inputs": "x"}),
                       ("/v1/score", {"inputs": "x", "targets": ["a"]})):
      err = _error(client.post(path, json={"prompt": "lora_entry", **body}), 409, "prompt")
      assert err["kind"] == "unservable_method"
      assert "'lora_entry'" in err["message"] and "'lora'" in err["message"]
  finally:
    library.remove("lora_entry")


def test_too_long_is_413_unless_truncated(client, engine):
  long_text = " ".join(["word"] * 80)
  err = _error(client.post("/v1/generate", json={"prompt": ENTRIES[0],
                                                 "inputs": ["ok", long_text]}),
               413, "inputs[1]")
  assert err["limit"] == 32 and err["tokens"] == len(engine.tokenize(long_text))
  assert "truncate" in err["message"]
  out = generate(client, ENTRIES[0], long_text, truncate=True)["outputs"]
  assert out["truncated"] is True and out["input_tokens"] == 32
  cut = engine.vocabulary.decode(engine.tokenize(long_text)[:31])
  assert out["text"] == generate(client, ENTRIES[0], cut)["outputs"]["text"]


@pytest.mark.parametrize("body,field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b'{"inputs": "x"}', "prompt"),
    (b'{"prompt": "rte_prompt"}', "inputs"),
    (b'{"prompt": "rte_prompt", "inputs": [1]}', "inputs"),
    (b'{"prompt": "rte_prompt", "inputs": "x", "colour": 1}', "colour"),
    (b'{"prompt": "rte_prompt", "inputs": "x", "decoding": {"method": "magic"}}',
     "decoding.method"),
    (b'{"prompt": "rte_prompt", "inputs": "x", "decoding": {"max_length": 999}}',
     "decoding.max_length"),
    (b'{"prompt": "rte_prompt", "inputs": "x", "decoding": {"method": "sample", "topk": 2, '
     b'"topp": 0.5}}', "decoding.topp"),
    (b'{"prompt": "rte_prompt", "inputs": "x", "truncate": "yes"}', "truncate"),
])
def test_malformed_requests_are_400_naming_the_field(client, body, field):
  _error(client.post("/v1/generate", content=body,
                     headers={"content-type": "application/json"}), 400, field)


def test_full_queue_is_503_with_retry_after(engine, library):
  import httpx
  from spot.serve import PromptCache, Service, running
  # Three examples wait (a batch of 4 not full, 3 s wait) and fill a queue of 3.
  small = Service(engine, PromptCache(library, engine.model_name, engine.config.emb_dim),
                  max_wait_ms=3000.0, max_queue=3)
  with running(small) as base, httpx.Client(base_url=base, timeout=60) as c:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      first = pool.submit(c.post, "/v1/generate",
                          json={"prompt": ENTRIES[0], "inputs": ["a", "b", "c"]})
      deadline = time.time() + 10
      while c.get("/healthz").json()["queue_depth"] < 3 and time.time() < deadline:
        time.sleep(0.01)
      r = c.post("/v1/generate", json={"prompt": ENTRIES[1], "inputs": "d"})
      assert first.result().status_code == 200  # the queued request is still answered
    err = _error(r, 503, None)
    assert int(r.headers["retry-after"]) >= 1 and err["retry_after_s"] >= 1
    assert "--max-queue" in err["message"]
    # The server is still up and serves a request that fits.
    assert c.post("/v1/generate", json={"prompt": ENTRIES[0], "inputs": ["a", "b"]}
                  ).status_code == 200
    assert c.get("/healthz").json()["status"] == "ok"


def test_decoding_methods(client):
  greedy = generate(client, ENTRIES[0], TEXTS[0])["outputs"]
  beam = generate(client, ENTRIES[0], TEXTS[0],
                  decoding={"method": "beam", "num_decodes": 2})["outputs"]
  sample = [generate(client, ENTRIES[0], TEXTS[0], decoding={
      "method": "sample", "temperature": 0.7, "topk": 5, "seed": 3})["outputs"]["text"]
      for _ in range(2)]
  short = generate(client, ENTRIES[0], TEXTS[0], decoding={"max_length": 2})["outputs"]
  assert isinstance(beam["text"], str) and np.isfinite(beam["score"])
  assert sample[0] == sample[1]  # a seed fixes the sample
  assert greedy["text"].startswith(short["text"])


def test_health_and_metrics(client):
  assert client.get("/healthz").json()["status"] == "ok"
  client.post("/v1/generate", json={"prompt": "nope", "inputs": "x"})
  text = client.get("/metrics").text
  assert _metric(text, 'spot_serve_requests_total{endpoint="generate",status="404"}') >= 1
  assert _metric(text, 'spot_serve_errors_total{kind="unknown_prompt"}') >= 1
  assert _metric(text, "spot_serve_batch_size_count") >= 1
  assert _metric(text, "spot_serve_queue_depth") == 0
  assert 'spot_serve_request_latency_seconds_bucket{endpoint="generate",le="0.5"}' in text


def _metric(text: str, name: str) -> float:
  m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
  assert m, f"{name} not in /metrics"
  return float(m.group(1))


def test_score_errors_name_the_field(client):
  long_target = " ".join(["label"] * 20)
  err = _error(client.post("/v1/score", json={"prompt": ENTRIES[0], "inputs": "x",
                                              "targets": ["yes", long_target]}),
               413, "targets[1]")
  assert err["limit"] == 8
  _error(client.post("/v1/score", json={"prompt": ENTRIES[0], "inputs": "x", "targets": []}),
         400, "targets")
  _error(client.post("/v1/score", json={"prompt": "base_prompt", "inputs": "x",
                                        "targets": ["a"]}), 409, "prompt")


def test_unknown_paths_and_methods_are_json(client):
  err = _error(client.get("/v1/nothing"), 404, "path")
  assert "/v1/generate" in err["message"]
  err = _error(client.get("/v1/generate"), 405, "path")
  assert "POST /v1/generate" in err["message"]
