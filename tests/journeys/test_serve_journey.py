"""docs/serving.md's journey, offline: a library of three prompts -> `spot infer` with each ->
`spot serve` on the same frozen base -> the same inputs over HTTP give the same text.

Every step is a console command in a subprocess, run from the repository root
with the flags docs/serving.md gives; the server runs on 127.0.0.1 (a free port).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from tests.journeys.conftest import BIN, REPO, spot

pytestmark = pytest.mark.slow

ENTRIES = ("rte_a", "rte_b", "rte_c")
PROMPT_LENGTH = 4
LENGTHS = "{'inputs': 128, 'targets': 8}"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("serve_journey")


@pytest.fixture(scope="module")
def library(data, work) -> str:
  lib = str(work / "library")
  rng = np.random.default_rng(0)
  for name in ENTRIES:
    path = work / f"{name}.npy"
    np.save(path, rng.uniform(-2, 2, (PROMPT_LENGTH, 4)).astype(np.float32))
    spot("library", "--library", lib, "add", name, "--prompt", str(path), "--model",
         "t5_1_1_tiny", "--task", "spot_glue_rte").check()
  return lib


@pytest.fixture(scope="module")
def predictions(data, work, library) -> dict[str, list[dict]]:
  """`spot infer` of 4 RTE examples with each entry's prompt (docs/serving.md)."""
  out = {}
  for name in ENTRIES:
    spot("infer", "--gin_file=spot/gin/models/t5_1_1_tiny_prompt.gin",
         "--gin_file=spot/gin/prompts/from_library.gin",
         "--gin_file=spot/gin/runs/prompt_infer.gin",
         f"--gin.LIBRARY_PATH='{library}'", f"--gin.LIBRARY_ENTRY='{name}'",
         f"--gin.INITIAL_CHECKPOINT_PATH='{data['checkpoint']}'",
         f"--gin.SPM_PATH='{data['spm']}'", f"--gin.DATA_DIR='{data['data_dir']}'",
         "--gin.MIXTURE_OR_TASK_NAME='spot_glue_rte'",
         "--gin.MIXTURE_OR_TASK_MODULE='spot.tasks'", f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
         f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.INFER_NUM_EXAMPLES=4",
         "--gin.BATCH_SIZE=4", f"--gin.INFER_OUTPUT_DIR='{work / 'infer' / name}'").check()
    path, = (work / "infer" / name / "inference").glob("*.jsonl")
    out[name] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert len(out[name]) == 4
  return out


@pytest.fixture(scope="module")
def server(data, library, work):
  """`spot serve` on the shared tiny base, as docs/serving.md starts it."""
  port = free_port()
  log = (work / "serve.log").open("w")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [str(BIN / "spot"), "serve", "--base", data["checkpoint"], "--vocabulary", data["spm"],
       "--library", library, "--port", str(port), "--max-batch", "4", "--max-wait-ms", "10",
       "--max-input-length", "128", "--max-target-length", "8", "--max-decode-length", "8"],
      cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
  import httpx
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 600
  while True:
    try:
      if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
        break
    except httpx.HTTPError:
      pass
    assert proc.poll() is None, (work / "serve.log").read_text()[-4000:]
    assert time.time() < deadline, "spot serve did not come up in 600 s"
    time.sleep(0.5)
  try:
    yield url
  finally:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(10)
    log.close()


def test_serve_lists_the_library(server):
  import httpx
  body = httpx.get(f"{server}/v1/prompts", timeout=30).json()
  assert body["model"] == "t5_1_1_tiny"
  assert [p["name"] for p in body["prompts"]] == list(ENTRIES)


def test_served_text_equals_spot_infer_for_each_entry(server, predictions):
  import httpx
  for name in ENTRIES:
    lines = predictions[name]
    r = httpx.post(f"{server}/v1/generate", timeout=120, json={
        "prompt": name, "inputs": [x["inputs"] for x in lines], "truncate": True})
    assert r.status_code == 200, r.text
    assert [o["text"] for o in r.json()["outputs"]] == [x["prediction"] for x in lines], name


def test_concurrent_mixed_requests_equal_spot_infer(server, predictions):
  import httpx
  jobs = [(name, i) for name in ENTRIES for i in range(4)] * 2

  def one(job):
    name, i = job
    r = httpx.post(f"{server}/v1/generate", timeout=120, json={
        "prompt": name, "inputs": predictions[name][i]["inputs"], "truncate": True})
    return job, r

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for (name, i), r in pool.map(one, jobs):
      assert r.status_code == 200, r.text
      assert r.json()["outputs"]["text"] == predictions[name][i]["prediction"]


def test_the_docs_curl_calls(server):
  generate = subprocess.run(
      ["curl", "-s", "-X", "POST", f"{server}/v1/generate", "-H",
       "Content-Type: application/json", "-d",
       '{"prompt": "rte_a", "inputs": ["rte sentence1: A cat. sentence2: An animal."]}'],
      capture_output=True, text=True, timeout=120, check=True)
  assert isinstance(json.loads(generate.stdout)["outputs"][0]["text"], str)
  score = subprocess.run(
      ["curl", "-s", "-X", "POST", f"{server}/v1/score", "-H",
       "Content-Type: application/json", "-d",
       '{"prompt": "rte_b", "inputs": "rte sentence1: A cat. sentence2: An animal.", '
       '"targets": ["entailment", "not_entailment"]}'],
      capture_output=True, text=True, timeout=120, check=True)
  body = json.loads(score.stdout)["outputs"]
  assert len(body["scores"]) == 2 and body["label"] in ("entailment", "not_entailment")
  missing = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                            f"{server}/v1/generate", "-d", '{"prompt": "rte_x", "inputs": "a"}'],
                           capture_output=True, text=True, timeout=60, check=True)
  assert missing.stdout == "404"
  metrics = subprocess.run(["curl", "-s", f"{server}/metrics"], capture_output=True, text=True,
                           timeout=60, check=True).stdout
  assert "spot_serve_batch_size_bucket" in metrics
