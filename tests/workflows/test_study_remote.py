"""`spot study report gs://...`: a study directory read (and its report written) through
a gs:// path, without network.

epath's own test backend (`etils.epath.testing.mock_epath`) takes every gs:// call
(epath would otherwise pick its TensorFlow backend whenever TF is installed, so that
choice is switched off inside the block), and `gs_bucket` maps `gs://test-bucket/...`
onto a local folder; every path the report touches through epath is recorded, so the
test also proves it reads only through the gs:// path it was given.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Iterator

import pytest

from spot.workflows import study_cli
from spot.workflows import study_report
from tests.workflows import study_helpers as helpers

pytestmark = pytest.mark.filterwarnings("ignore")
BUCKET = "gs://test-bucket"


@contextlib.contextmanager
def gs_bucket(root: pathlib.Path, seen: list[str]) -> Iterator[str]:
  """`gs://test-bucket/X` is `root/X` for every epath call inside the block; yields the URL."""
  from unittest import mock
  from etils.epath import gpath, testing

  def local(path) -> str:
    text = os.fspath(path)
    seen.append(text)
    return str(root / text[len(BUCKET) + 1:]) if text.startswith(BUCKET + "/") else text

  def remote(path: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else f"{BUCKET}/{rel}"

  one = lambda fn, path, *a, **k: fn(local(path), *a, **k)
  two = lambda fn, path, dst, *a, **k: fn(local(path), local(dst), *a, **k)
  glob = lambda fn, pattern: [remote(p) for p in fn(local(pattern))]

  def walk(fn, top, **k):
    for folder, dirs, files in fn(local(top), **k):
      yield remote(os.fspath(folder)), dirs, files

  with testing.mock_epath(open=one, exists=one, isdir=one, listdir=one, makedirs=one,
                          mkdir=one, remove=one, rmtree=one, stat=one, glob=glob, walk=walk,
                          rename=two, replace=two, copy=two), \
       mock.patch.object(gpath, "_is_tf_installed", lambda: False):
    yield BUCKET


@pytest.fixture
def finished_study(tmp_path) -> pathlib.Path:
  """A finished tiny study (3 sources x 2 targets x 2 seeds) in tmp_path/bucket/study."""
  root = tmp_path / "bucket"
  root.mkdir()
  helpers.run_study(root)
  return root


def test_report_reads_a_gs_study_dir(finished_study, capsys):
  local = study_report.write_report(finished_study / "study", finished_study / "local_report")
  seen: list[str] = []
  with gs_bucket(finished_study, seen) as bucket:
    remote = study_report.write_report(f"{bucket}/study")
    assert study_cli.main(["report", f"{bucket}/study", "--out", f"{bucket}/cli_report"]) == 0
  out = capsys.readouterr().out
  assert f"wrote {BUCKET}/cli_report/report.md" in out and "| oracle (best of all sources) |" in out
  # The same numbers as the local read, and the files landed in the bucket.
  strip = lambda r: {k: v for k, v in r.items() if k != "files"}
  assert json.loads(json.dumps(strip(remote))) == json.loads(json.dumps(strip(local)))
  assert remote["missing"] == [] and study_report.check_consistency(remote) == []
  for folder in ("study/report", "cli_report"):
    for name in ("report.md", "results.json", "plots/rer_heatmap.png",
                 "plots/similarity_avg_tokens_sst_b.png"):
      assert (finished_study / folder / name).is_file(), (folder, name)
  assert json.loads((finished_study / "study/report/results.json").read_text())["grid"] == \
      json.loads(json.dumps(local["grid"]))
  # Every epath call went through the gs:// path: metrics, checkpoints, embeddings, outputs.
  assert seen and all(p.startswith(f"{BUCKET}/") for p in seen)
  assert any(p.endswith("transfers/topic__sst_b/seed1/metrics.json") for p in seen)
  assert any(p.endswith("embeddings/sst_b.npy") for p in seen)


def test_a_partial_gs_study_reports_what_is_missing(finished_study):
  (finished_study / "study/transfers/sst__add/seed0/metrics.json").unlink()
  with gs_bucket(finished_study, []) as bucket:
    r = study_report.write_report(f"{bucket}/study")
  assert r["missing"] == ["transfers/sst__add/seed0"] and r["grid"]["add"]["partial"]
  md = (finished_study / "study/report/report.md").read_text()
  assert "**Partial report**: 1 run(s) not finished: `transfers/sst__add/seed0`" in md
