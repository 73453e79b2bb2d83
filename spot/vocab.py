"""`WordVocabulary`: a small, deterministic whitespace-word vocabulary for SeqIO.

The demo's synthetic tasks are written in a closed lexicon of a few hundred
words, so one id per word keeps sequences short (fast on CPU) and needs no
SentencePiece model, no download and no training. Ids follow T5's reserved
ids: 0 PAD, 1 EOS, 2 UNK, then the words in the order given. Encoding splits
on whitespace; an unknown word becomes UNK. Python and TensorFlow paths agree
token for token.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Iterable, Sequence

import seqio
import tensorflow as tf

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
RESERVED = ("<pad>", "</s>", "<unk>")


class WordVocabulary(seqio.Vocabulary):
  """One id per whitespace-separated word of a fixed word list.

  Args:
    words: the words, in id order (ids start at 3); no duplicates, no
      whitespace inside a word, none of "<pad>", "</s>", "<unk>".
    extra_ids: sentinel ids appended after the words (T5's `extra_ids`).
  """

  def __init__(self, words: Sequence[str], extra_ids: int = 0):
    words = tuple(words)
    bad = [w for w in words if not w or w != w.strip() or len(w.split()) != 1 or w in RESERVED]
    if bad:
      raise ValueError(f"WordVocabulary words must be single non-empty tokens without "
                       f"whitespace and not reserved {RESERVED}; fix {bad[:5]}.")
    dupes = sorted({w for w in words if words.count(w) > 1})
    if dupes:
      raise ValueError(f"WordVocabulary has duplicate words {dupes[:5]}; list each word once.")
    self._words = RESERVED + words
    self._ids = {w: i for i, w in enumerate(self._words)}
    super().__init__(extra_ids=extra_ids)

  # -- seqio.Vocabulary -------------------------------------------------------

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def _base_vocab_size(self) -> int:
    return len(self._words)

  @property
  def words(self) -> tuple[str, ...]:
    """The words with ids 3, 4, ... (without the reserved tokens)."""
    return self._words[len(RESERVED):]

  def _encode(self, s: str) -> list[int]:
    return [self._ids.get(w, UNK_ID) for w in s.split()]

  def _decode(self, ids: Iterable[int]) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i == PAD_ID:
        continue
      out.append(self._words[i] if 0 <= i < len(self._words) else RESERVED[UNK_ID])
    return " ".join(out)

  @functools.cached_property
  def _table(self) -> tf.lookup.StaticHashTable:
    # Built eagerly even when first used inside a tf.data map, so every
    # dataset's graph can capture the same table.
    with tf.init_scope():
      init = tf.lookup.KeyValueTensorInitializer(
          tf.constant(self._words), tf.range(len(self._words), dtype=tf.int32))
      return tf.lookup.StaticHashTable(init, default_value=UNK_ID)

  @functools.cached_property
  def _words_tf(self) -> tf.Tensor:
    with tf.init_scope():
      return tf.constant(self._words)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self._table.lookup(tf.strings.split(s))

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    # decode_tf already replaced ids after EOS with PAD and ids out of range with UNK.
    ids = tf.cast(ids, tf.int32)
    words = tf.gather(self._words_tf, tf.where(ids >= len(self._words), UNK_ID, ids))
    words = tf.where((ids == PAD_ID) | (ids == EOS_ID), "", words)
    joined = tf.strings.reduce_join(words, axis=-1, separator=" ")
    return tf.strings.strip(tf.strings.regex_replace(joined, " +", " "))

  # -- identity ---------------------------------------------------------------

  @functools.cached_property
  def fingerprint(self) -> str:
    """A short hash of the word list: equal vocabularies have equal fingerprints."""
    text = "\n".join(self._words) + f"\nextra_ids={self.extra_ids}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]

  def __eq__(self, other: object) -> bool:
    return (isinstance(other, WordVocabulary) and self._words == other._words
            and self.extra_ids == other.extra_ids)

  def __hash__(self) -> int:
    return hash((self._words, self.extra_ids))

  def __str__(self) -> str:
    return f"WordVocabulary({len(self.words)} words, extra_ids={self.extra_ids}, " \
           f"sha {self.fingerprint})"

  __repr__ = __str__


def padded_size(vocab: seqio.Vocabulary, multiple: int = 8) -> int:
  """The vocabulary size rounded up to `multiple` (an embedding table's rows)."""
  return -(-vocab.vocab_size // multiple) * multiple

