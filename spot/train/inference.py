"""Decoding, scoring and rank classification by module: thin calls of `EncoderDecoderModel`.

The computation lives in `spot.train.models.EncoderDecoderModel`
(`predict_batch`, `score_batch`, `score_candidates`, `rank_classify`). These
functions keep the older calling convention `(model, params, batch)`, where
`model` is a bare `spot.models.T5` module (or an `EncoderDecoderModel`) and the
prompt's per-example inputs may come nested as `batch['prompt_inputs']`
(a dict of arrays passed to the prompt module). See docs/decoding.md for how to
choose a decoding method.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import jax
import numpy as np

from spot.models import T5
from spot.train import models as models_lib
from spot.train.models import (DECODE_METHODS, DEFAULT_ALPHA, DEFAULT_BEAM_SIZE, EOS_ID,
                               EncoderDecoderModel, init_cache, make_tokens_to_logits,
                               shift_right)
from spot.train.models import Batch, PyTree

Array = jax.Array
ModelLike = Union[T5, EncoderDecoderModel]


def as_model(model: ModelLike, batch: Batch) -> Tuple[EncoderDecoderModel, dict]:
  """(EncoderDecoderModel, flat batch) for a module or model and an older-style batch.

  A nested `batch['prompt_inputs']` becomes top-level features, which the
  returned model reads as its prompt features.
  """
  batch = dict(batch)
  nested = batch.pop("prompt_inputs", None) or {}
  if isinstance(model, T5):
    names = tuple(sorted(nested)) if nested else None
    model = EncoderDecoderModel(model.config, model.prompt_factory, prompt_features=names)
  elif not isinstance(model, EncoderDecoderModel):
    raise TypeError(f"model must be a spot.models.T5 or an EncoderDecoderModel, got "
                    f"{type(model).__name__}.")
  batch.update(nested)
  return model, batch


def encode(model: ModelLike, params: PyTree, batch: Batch) -> Tuple[Array, Array]:
  """Runs the encoder (prompt included): returns (encoded [B, S, D], valid [B, S])."""
  edm, flat = as_model(model, batch)
  return models_lib.encode(edm.module, params, flat["encoder_input_tokens"],
                           edm.prompt_inputs(flat))


def predict_batch(model: ModelLike, params: PyTree, batch: Batch, *,
                  max_decode_length: Optional[int] = None, method: str = "greedy",
                  num_decodes: Optional[int] = None, alpha: float = DEFAULT_ALPHA,
                  temperature: Union[float, Array] = 1.0, topk: int = 0, topp: float = 0.0,
                  rng: Optional[Array] = None, eos_id: int = EOS_ID,
                  return_all: bool = False) -> Tuple[Array, Array]:
  """(tokens [B, L], scores [B]) of the best decode, or with `return_all` every decode
  ([B, k, L], [B, k], best last): `EncoderDecoderModel.predict_batch_with_aux`."""
  edm, flat = as_model(model, batch)
  tokens, aux = edm.predict_batch_with_aux(
      params, flat, rng, method=method, num_decodes=num_decodes, alpha=alpha,
      temperature=temperature, topk=topk, topp=topp, max_decode_length=max_decode_length,
      eos_id=eos_id, return_all_decodes=return_all)
  return tokens, aux["scores"]


def score_batch(model: ModelLike, params: PyTree, batch: Batch) -> Array:
  """Log likelihood of each example's target [B]: `EncoderDecoderModel.score_batch`."""
  edm, flat = as_model(model, batch)
  return edm.score_batch(params, flat)


def score_candidates(model: ModelLike, params: PyTree, batch: Batch,
                     candidates: Union[Array, np.ndarray]) -> Array:
  """Log likelihood of every candidate [B, C]: `EncoderDecoderModel.score_candidates`."""
  edm, flat = as_model(model, batch)
  return edm.score_candidates(params, flat, candidates)


def rank_classify(model: ModelLike, params: PyTree, batch: Batch,
                  candidates: Union[Array, np.ndarray]) -> Array:
  """Index of the most likely candidate [B]: `EncoderDecoderModel.rank_classify`."""
  edm, flat = as_model(model, batch)
  return edm.rank_classify(params, flat, candidates)


__all__ = [
    "DECODE_METHODS", "DEFAULT_ALPHA", "DEFAULT_BEAM_SIZE", "EOS_ID", "as_model", "encode",
    "init_cache", "make_tokens_to_logits", "predict_batch", "rank_classify", "score_batch",
    "score_candidates", "shift_right",
]
