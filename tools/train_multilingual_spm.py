"""Trains a small multilingual SentencePiece model from Tatoeba/LASER text.

mT5's vocabulary lives on GCS; offline (tests, demos, air-gapped machines) a
small stand-in trained on the 18 WikiLingua languages lets SP-ROUGE and the
xGen tasks run. byte_fallback keeps every character encodable.

  python tools/train_multilingual_spm.py --text-dir ../shared/data/multilingual_text/tatoeba_laser_v1 \
      --out /tmp/multilingual [--vocab-size 3000] [--lines-per-language 200]

writes /tmp/multilingual.model and /tmp/multilingual.vocab.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
from typing import Optional, Sequence

import sentencepiece

from spot.xgen import languages


def tatoeba_sentences(text_dir: pathlib.Path, codes: Sequence[str] = languages.WIKILINGUA_CODES,
                      lines_per_language: int = 200) -> list[str]:
  """The first `lines_per_language` sentences of each language's Tatoeba file
  (English: the English side of the German pair)."""
  sentences = []
  for lang in codes:
    code = languages.TATOEBA_CODES[languages.check_language(lang)]
    name = "tatoeba.deu-eng.eng" if lang == "en" else f"tatoeba.{code}-eng.{code}"
    path = pathlib.Path(text_dir) / name
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found; --text-dir must hold the Tatoeba/LASER files "
                              "tatoeba.<xxx>-eng.<xxx>")
    with open(path, encoding="utf-8") as f:
      sentences += [line.rstrip("\n") for line in itertools.islice(f, lines_per_language)]
  return sentences


def train(text_dir: pathlib.Path, out_prefix: pathlib.Path, vocab_size: int = 3000,
          lines_per_language: int = 200, num_threads: int = 2) -> str:
  """Trains a unigram model with T5's special ids (pad 0, EOS 1, UNK 2, no
  BOS); returns the path of the .model file."""
  pathlib.Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(tatoeba_sentences(text_dir, lines_per_language=lines_per_language)),
      model_prefix=str(out_prefix), vocab_size=vocab_size, model_type="unigram",
      character_coverage=1.0, byte_fallback=True, num_threads=num_threads, minloglevel=2,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1)  # T5/mT5's special ids
  return f"{out_prefix}.model"


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--text-dir", required=True, type=pathlib.Path)
  parser.add_argument("--out", required=True, type=pathlib.Path, help="output prefix")
  parser.add_argument("--vocab-size", type=int, default=3000)
  parser.add_argument("--lines-per-language", type=int, default=200)
  args = parser.parse_args(argv)
  print(train(args.text_dir, args.out, args.vocab_size, args.lines_per_language))
  return 0


if __name__ == "__main__":
  sys.exit(main())
