"""The unsupervised xGen objectives: lossless, sized as T5's, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spot.xgen import languages
from spot.xgen import preprocessors as prep

VOCAB = 1000  # sentinels count down from 999; document tokens stay below 500
FEATURES = {"inputs": seqio.Feature(seqio.PassThroughVocabulary(VOCAB), add_eos=True),
            "targets": seqio.Feature(seqio.PassThroughVocabulary(VOCAB), add_eos=True)}


def documents(lengths=(300, 41, 7, 500, 2, 90)) -> tuple[tf.data.Dataset, list[int]]:
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 500, n).astype(np.int32) for n in lengths]
  dataset = tf.data.Dataset.from_generator(
      lambda: ({"targets": d} for d in docs),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  return dataset, np.concatenate(docs).tolist()


def restore(inputs: list[int], targets: list[int]) -> list[int]:
  """Puts the spans of `targets` back in place of the sentinels of `inputs`."""
  spans, current = {}, None
  for token in targets:
    if token >= 500:
      current = spans.setdefault(token, [])
    else:
      current.append(token)
  out = []
  for token in inputs:
    out += spans[token] if token >= 500 else [token]
  return out


def test_span_corruption_lengths_match_t5():
  assert prep.span_corruption_lengths(512) == (568, 114)
  assert prep.span_corruption_lengths(1024) == (1137, 229)


@pytest.mark.parametrize("length", [2, 3, 10, 568])
def test_random_spans_noise_mask(length):
  mask = prep.random_spans_noise_mask(tf.constant(length), 0.15, 3.0,
                                      tf.constant([[1, 2], [3, 4]])).numpy()
  noise = max(1, min(length - 1, round(length * 0.15)))
  assert mask.sum() == noise and not mask[0]
  starts = np.sum(mask[1:] & ~mask[:-1])
  assert starts == max(1, min(round(noise / 3), noise, length - noise))


@pytest.mark.parametrize("objective", ["span_corruption", "iid_denoising"])
def test_denoising_is_lossless_and_fits_inputs(objective):
  dataset, stream = documents()
  fn = getattr(prep, objective)
  examples = list(fn(dataset, {"inputs": 64, "targets": 32}, FEATURES).as_numpy_iterator())
  restored = []
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert targets[0] == VOCAB - 1  # <extra_id_0> opens the targets
    assert len(inputs) <= 63 + 2  # room for EOS, up to rounding of the i.i.d. noise
    restored += restore(inputs, targets)
  assert restored == stream
  sentinels = sum(t >= 500 for ex in examples for t in ex["inputs"].tolist())
  noise = sum(t < 500 for ex in examples for t in ex["targets"].tolist())
  assert 0.08 < noise / len(stream) < 0.25 and sentinels > 0


def test_span_corruption_is_reproducible_under_seqio_seeds():
  def run():
    dataset, _ = documents()
    with seqio.utils.map_seed_manager(7):
      out = prep.span_corruption(dataset, {"inputs": 64}, FEATURES)
    return [ex["inputs"].tolist() for ex in out.as_numpy_iterator()]

  assert run() == run()


def test_prefix_lm_splits_segments():
  dataset, stream = documents()
  examples = list(prep.prefix_lm(dataset, {"inputs": 20, "targets": 12})
                  .as_numpy_iterator())
  joined = []
  for ex in examples:
    assert 1 <= len(ex["inputs"]) <= 19 and 1 <= len(ex["targets"]) <= 11
    joined += ex["inputs"].tolist() + ex["targets"].tolist()
  assert joined == stream


def test_lead_sentence_and_documents():
  lines = tf.data.Dataset.from_tensor_slices(
      ["First line.", "Second line!", "สวัสดีครับ", "third", "only one"])
  docs = list(prep.lines_to_documents(lines, lines_per_document=4).as_numpy_iterator())
  assert docs[0]["text"].decode() == "First line.\nSecond line!\nสวัสดีครับ\nthird"
  texts = tf.data.Dataset.from_tensor_slices(
      {"text": ["Lead here. Then more!  And 第三句。最後", "no split here", docs[0]["text"]]})
  out = list(prep.lead_sentence(texts).as_numpy_iterator())
  assert [(x["targets"].decode(), x["inputs"].decode()) for x in out] == [
      ("Lead here.", "Then more! And 第三句。 最後"),
      ("First line.", "Second line! สวัสดีครับ third"),
  ]


def test_add_ids_uses_the_fixed_tables():
  dataset = tf.data.Dataset.from_tensor_slices({"inputs": [[1, 2]]})
  ex = next(prep.add_ids(dataset, "th", "span_corruption").as_numpy_iterator())
  assert ex["language"] == languages.LANGUAGE_IDS["th"] == 15
  assert ex["task"] == languages.TASK_IDS["span_corruption"] == 1
  assert ex["language_code"] == b"th" and ex["task_name"] == b"span_corruption"
  assert languages.language_id("sw") > 17  # mC4 languages follow the 18
  with pytest.raises(ValueError, match="unknown xGen task 'mlm'"):
    prep.add_ids(dataset, "th", "mlm")
