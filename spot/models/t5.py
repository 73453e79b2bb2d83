"""The T5 encoder-decoder (T5 1.0, T5 1.1, mT5) with T5X parameter names.

Parameter tree (REFERENCE.md 1.4): `token_embedder/embedding`,
`encoder/{relpos_bias, layers_i, encoder_norm}`, `decoder/{relpos_bias,
layers_i, decoder_norm, logits_dense}` so a T5X checkpoint maps on directly.
With `config.scan_layers` the `layers_i` of a stack become one `layers`
subtree whose arrays are stacked on `config.param_scan_axis` (see
`spot.models.scan` for the conversion both ways).

A prompt enters through `prompt_factory`: a zero-argument callable returning
a Flax module that the encoder creates under the name `prompt` (so its
parameters live at `encoder/prompt/...`, as in prompt-tuning). The module is
called as `prompt(embedded [B, T, D], tokens [B, T], **prompt_inputs)` and
returns the embedded input with the prompt inserted, [B, P + T, D]. The
encoder treats the P extra positions as always valid, so attention masks,
relative positions and the decoder's cross-attention all cover the prompt.

Packed rows (SeqIO's packed features): `encoder_segment_ids`,
`encoder_positions`, `decoder_segment_ids` and `decoder_positions` [B, L]
hold several examples per row. Attention is then block-diagonal by segment
(encoder self, causal decoder self, and cross-attention between a decoder
segment and the encoder segment with the same id), and relative position
biases come from each token's position inside its segment. With a prompt the
encoder row already holds P placeholder positions at the front of every
segment (`PromptFeatureConverter(pack=True)` puts them there); the prompt
module is called with `segment_ids=` and `positions=` and writes each
segment's prompt over those positions, returning [B, L, D]. An example's
output is then the same function of its tokens and its prompt as unpacked.

Prefix tuning (`spot.peft.PrefixConfig`) adds key/value positions inside
attention instead: a stack's optional `prefix` module (the reparameterisation
MLP) runs once per call and its hidden state [P, h] goes to every layer as
`prefix_hidden`; each chosen attention puts its P prefixes before its keys
and values, visible to every query, with zero position bias.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spot.models.config import T5Config
from spot.models import layers as L

Array = jax.Array
PromptFactory = Callable[[], nn.Module]


def _dtype(config: T5Config):
  return jnp.dtype(config.dtype)


def _remat(cls, config: T5Config, static_argnums: tuple[int, ...]):
  if config.remat_policy == "none":
    return cls
  policy = None
  if config.remat_policy == "minimal":
    policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
  # Argument 0 is the module itself; `deterministic` and `decode` are static.
  # Under scan the loop already keeps XLA from merging recomputation back into
  # the forward pass, so CSE prevention (extra barriers) is only needed unrolled.
  return nn.remat(cls, policy=policy, static_argnums=static_argnums,
                  prevent_cse=not config.scan_layers)


def _layer_stack(cls, config: T5Config, count: int, static_argnums: tuple[int, ...],
                 num_inputs: int, peft: Any = None):
  """The layers of one stack: `count` modules `layers_i`, or one scanned `layers`.

  Scanned, the layer's parameters gain a "layers" axis at
  `config.param_scan_axis` and its decode cache a leading layer axis; every
  input but the carried hidden state is broadcast to all layers, and each layer
  draws its own dropout mask.
  """
  layer_cls = _remat(cls, config, static_argnums)
  if not config.scan_layers:
    return [layer_cls(config, peft=peft, name=f"layers_{i}") for i in range(count)]
  scanned = nn.scan(layer_cls, variable_axes={"params": config.param_scan_axis, "cache": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast,) * num_inputs, length=count,
                    metadata_params={nn.PARTITION_NAME: "layers"})
  return scanned(config, scanned=True, peft=peft, name="layers")


def _apply_stack(layers, x: Array, *inputs) -> Array:
  """Runs what `_layer_stack` built: the scanned module once, or each layer in turn."""
  if isinstance(layers, (list, tuple)):  # Flax stores a setup() list as a tuple
    for layer in layers:
      x = layer(x, *inputs)
    return x
  return layers(x, *inputs)[0]


def _residual(c: T5Config, x: Array, y: Array, deterministic: bool) -> Array:
  return nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic) + x


def _prefix_encoder(peft: Any, stack: str) -> Optional[Callable[[int], nn.Module]]:
  """The stack-level prefix reparameterisation a PEFT method builds (`spot.peft.prefix`), if any."""
  hook = getattr(peft, "prefix_encoder", None)
  return None if hook is None else hook(stack)


def _prefix_hidden(stack: nn.Module) -> Optional[Array]:
  """The hidden state [P, h] of a stack's prefix MLP (`Encoder.prefix`), or None without one."""
  return stack.prefix() if hasattr(stack, "prefix") else None


def _block_adapter(peft: Any, kind: str, name: str, y: Array, deterministic: bool) -> Array:
  """A PEFT bottleneck adapter (`spot.peft.adapters`) on a sublayer's output, if any."""
  factory = None if peft is None else peft.block_adapter(kind)
  return y if factory is None else factory(name=name)(y, deterministic)


def _attention_block(c: T5Config, x: Array, kv: Optional[Array], mask: Optional[Array],
                     bias: Optional[Array], norm: str, attention: str, deterministic: bool,
                     decode: bool = False, peft: Any = None, prefix_target: Optional[str] = None,
                     prefix_hidden: Optional[Array] = None) -> Array:
  """Pre-norm attention with a residual: x + drop(attn(LN(x), kv or LN(x)))."""
  dt = _dtype(c)
  y = L.RMSNorm(c.layer_norm_epsilon, dt, name=norm)(x)
  y = L.MultiHeadAttention(c.num_heads, c.head_dim, dt, c.dropout_rate,
                           c.float32_attention_logits, peft=peft, prefix_target=prefix_target,
                           name=attention)(
                               y, y if kv is None else kv, mask, bias, decode=decode,
                               deterministic=deterministic, prefix_hidden=prefix_hidden)
  y = _block_adapter(peft, "attention", f"{attention}_adapter", y, deterministic)
  return _residual(c, x, y, deterministic)


def _mlp_block(c: T5Config, x: Array, deterministic: bool, peft: Any = None) -> Array:
  """Pre-norm feed-forward with a residual."""
  dt = _dtype(c)
  y = L.RMSNorm(c.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
  y = L.MlpBlock(c.mlp_dim, c.mlp_activations, dt, c.dropout_rate, peft=peft,
                 name="mlp")(y, deterministic)
  y = _block_adapter(peft, "mlp", "mlp_adapter", y, deterministic)
  return L.constrain(_residual(c, x, y, deterministic), ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """One encoder layer; `scanned` layers return `(x, None)` for `nn.scan`."""
  config: T5Config
  scanned: bool = False
  peft: Any = None

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool = True,
               decode: bool = False, prefix_hidden: Optional[Array] = None):
    del decode
    c = self.config
    x = _attention_block(c, x, None, mask, bias, "pre_attention_layer_norm", "attention",
                         deterministic, peft=self.peft, prefix_target="encoder_self",
                         prefix_hidden=prefix_hidden)
    x = _mlp_block(c, x, deterministic, self.peft)
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  """One decoder layer; `scanned` layers return `(x, None)` for `nn.scan`."""
  config: T5Config
  scanned: bool = False
  peft: Any = None

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Optional[Array],
               cross_mask: Array, bias: Array, deterministic: bool = True,
               decode: bool = False, prefix_hidden: Optional[Array] = None):
    c = self.config
    x = _attention_block(c, x, None, self_mask, bias, "pre_self_attention_layer_norm",
                         "self_attention", deterministic, decode, self.peft, "decoder_self",
                         prefix_hidden)
    x = _attention_block(c, x, encoded, cross_mask, None, "pre_cross_attention_layer_norm",
                         "encoder_decoder_attention", deterministic, peft=self.peft,
                         prefix_target="encoder_decoder", prefix_hidden=prefix_hidden)
    x = _mlp_block(c, x, deterministic, self.peft)
    return (x, None) if self.scanned else x


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module
  prompt_factory: Optional[PromptFactory] = None
  peft: Any = None

  def setup(self):
    c = self.config
    if self.prompt_factory is not None:
      self.prompt = self.prompt_factory()
    self.relpos_bias = L.RelativePositionBiases(
        c.relative_attention_num_buckets, c.relative_attention_max_distance, c.num_heads,
        _dtype(c))
    self.layers = _layer_stack(EncoderLayer, c, c.num_encoder_layers, (4, 5), 5, self.peft)
    prefix = _prefix_encoder(self.peft, "encoder")
    if prefix is not None:
      self.prefix = prefix(c.emb_dim)
    self.encoder_norm = L.RMSNorm(c.layer_norm_epsilon, _dtype(c))
    self.input_dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))
    self.output_dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))

  def __call__(self, tokens: Array, deterministic: bool = True,
               prompt_inputs: Optional[Mapping[str, Array]] = None,
               segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None) -> tuple[Array, Array]:
    """Returns (encoded [B, S, D], valid [B, S]) where S = prompt length + T.

    With `segment_ids` and `positions` [B, T] (a packed row) S = T: the
    prompt is written over each segment's first P positions.
    """
    if tokens.ndim != 2:
      raise ValueError(f"encoder_input_tokens must be [batch, length], got shape {tokens.shape}.")
    if (segment_ids is None) != (positions is None):
      raise ValueError("A packed encoder batch needs both encoder_segment_ids and "
                       "encoder_positions; give both (SeqIO's packed features) or neither.")
    if segment_ids is not None:
      return self._packed(tokens, segment_ids, positions, deterministic, prompt_inputs)
    x = self._embed(tokens, deterministic, prompt_inputs)
    valid = tokens > 0
    if self.prompt_factory is not None:
      extra = x.shape[1] - tokens.shape[1]
      valid = jnp.concatenate([jnp.ones((tokens.shape[0], extra), bool), valid], axis=1)
    length = x.shape[1]
    mask = L.make_attention_mask(valid, valid)
    bias = self.relpos_bias(length, length, True)
    return self._stack(x, mask, bias, deterministic), valid

  def _packed(self, tokens: Array, segment_ids: Array, positions: Array, deterministic: bool,
              prompt_inputs: Optional[Mapping[str, Array]]) -> tuple[Array, Array]:
    """The packed encoder: [B, T] rows of segments -> (encoded [B, T, D], segment_ids [B, T])."""
    for name, value in (("encoder_segment_ids", segment_ids), ("encoder_positions", positions)):
      if value.shape != tokens.shape:
        raise ValueError(f"{name} has shape {value.shape}; it must match "
                         f"encoder_input_tokens {tokens.shape}.")
    x = self._embed(tokens, deterministic, prompt_inputs, segment_ids=segment_ids,
                    positions=positions)
    length = x.shape[1]
    mask = L.make_segment_mask(segment_ids, segment_ids)
    bias = self.relpos_bias(length, length, True, positions, positions)
    return self._stack(x, mask, bias, deterministic), segment_ids

  def _embed(self, tokens: Array, deterministic: bool,
             prompt_inputs: Optional[Mapping[str, Array]], **packing: Array) -> Array:
    """Embedded tokens [B, T] with the prompt, after input dropout: [B, S, D].

    Unpacked S = P + T (the prompt goes in front); packed (`segment_ids=`,
    `positions=` [B, T] given) S = T, the prompt written over each segment's
    prompt positions.
    """
    x = self.shared_embedding(tokens.astype(jnp.int32))
    if self.prompt_factory is not None:
      if packing:
        _check_packable(self.prompt)
      x = self.prompt(x, tokens, **packing, **dict(prompt_inputs or {}))
      if packing and x.shape[:2] != tokens.shape:
        raise ValueError(f"The packed prompt returned shape {x.shape}; it must write over the "
                         f"row's prompt positions and keep {tokens.shape}.")
    elif prompt_inputs:
      raise ValueError(
          f"prompt_inputs {sorted(prompt_inputs)} given to a model built without a prompt; "
          "build T5(config, prompt_factory=...) to use them.")
    x = self.input_dropout(x, deterministic=deterministic)
    return L.constrain(x, ("batch", "length", "embed"))

  def _stack(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
    x = _apply_stack(self.layers, x, mask, bias, deterministic, False, _prefix_hidden(self))
    x = self.encoder_norm(x)
    return self.output_dropout(x, deterministic=deterministic)


def _check_packable(prompt: nn.Module) -> None:
  """Raises before compute when `prompt` cannot fill the prompt slots of packed rows."""
  if not getattr(type(prompt), "SUPPORTS_PACKING", False):
    raise ValueError(
        f"Prompt module {type(prompt).__name__} cannot be packed: it only prefixes whole rows. "
        "Train it unpacked (--gin.PACK=False), or give it `segment_ids=`/`positions=` "
        "keywords and SUPPORTS_PACKING = True as spot.prompts.PrefixPrompt has.")


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module
  peft: Any = None

  def setup(self):
    c = self.config
    self.relpos_bias = L.RelativePositionBiases(
        c.relative_attention_num_buckets, c.relative_attention_max_distance, c.num_heads,
        _dtype(c))
    self.layers = _layer_stack(DecoderLayer, c, c.num_decoder_layers, (6, 7), 7, self.peft)
    prefix = _prefix_encoder(self.peft, "decoder")
    if prefix is not None:
      self.prefix = prefix(c.emb_dim)
    self.decoder_norm = L.RMSNorm(c.layer_norm_epsilon, _dtype(c))
    self.input_dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))
    self.output_dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))
    if not c.logits_via_embedding:
      self.logits_dense = L.Dense(c.vocab_size, ("embed", "vocab"), dtype=jnp.float32)

  def __call__(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               encoder_segment_ids: Optional[Array] = None,
               segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None) -> Array:
    """Logits [B, T, V]; packed when `segment_ids`/`positions` [B, T] and
    `encoder_segment_ids` [B, S] are given (training and scoring only)."""
    x = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    x = self.input_dropout(x, deterministic=deterministic)
    x = L.constrain(x, ("batch", "length", "embed"))
    length = x.shape[1]
    packed = (encoder_segment_ids, segment_ids, positions)
    if any(v is not None for v in packed):
      if any(v is None for v in packed):
        raise ValueError("A packed decoder batch needs encoder_segment_ids, "
                         "decoder_segment_ids and decoder_positions; give all three or none.")
      if decode:
        raise ValueError("Decoding with a cache reads unpacked rows; give no segment ids "
                         "(pack=False for inference).")
      self_mask = jnp.logical_and(L.make_causal_mask(length),
                                  L.make_segment_mask(segment_ids, segment_ids))
      bias = self.relpos_bias(length, length, False, positions, positions)
      cross_mask = L.make_segment_mask(segment_ids, encoder_segment_ids)
      return self._stack(x, encoded, self_mask, cross_mask, bias, deterministic, False)
    if decode and length == 1:
      # One decode step: causal masking comes from the cache index inside
      # attention, which slices this step's row out of the full-length bias.
      if max_decode_length is None:
        raise ValueError("Decoder.decode with a cache needs max_decode_length.")
      bias = self.relpos_bias(max_decode_length, max_decode_length, False)
      self_mask = None
      dec_valid = jnp.ones(decoder_input_tokens.shape, bool)
    else:
      # Training / scoring, or the call that builds the cache over the full length.
      bias = self.relpos_bias(length, length, False)
      if decode:
        dec_valid = jnp.ones(decoder_input_tokens.shape, bool)
        self_mask = L.make_causal_mask(length)
      else:
        # Without targets every decoder position counts (the start token is 0).
        dec_valid = (jnp.ones(decoder_input_tokens.shape, bool) if decoder_target_tokens is None
                     else decoder_target_tokens > 0)
        self_mask = jnp.logical_and(L.make_causal_mask(length),
                                    L.make_attention_mask(dec_valid, dec_valid))
    cross_mask = L.make_attention_mask(dec_valid, encoder_valid)
    return self._stack(x, encoded, self_mask, cross_mask, bias, deterministic, decode)

  def _stack(self, x: Array, encoded: Array, self_mask: Optional[Array], cross_mask: Array,
             bias: Array, deterministic: bool, decode: bool) -> Array:
    """The decoder layers, final norm and logits (float32)."""
    c = self.config
    x = _apply_stack(self.layers, x, encoded, self_mask, cross_mask, bias, deterministic, decode,
                     _prefix_hidden(self))
    x = self.decoder_norm(x)
    x = self.output_dropout(x, deterministic=deterministic)
    if c.logits_via_embedding:
      logits = self.shared_embedding.attend(x) / np.sqrt(x.shape[-1]).astype(np.float32)
    else:
      logits = self.logits_dense(jnp.asarray(x, jnp.float32))
    return L.constrain(logits, ("batch", "length", "vocab"))


class T5(nn.Module):
  """Encoder-decoder T5 returning float32 logits [batch, target_len, vocab].

  Attributes:
    config: a `T5Config`.
    prompt_factory: optional zero-argument callable building the prompt module
      (see module docstring); its parameters live under `encoder/prompt`.
    peft: optional parameter-efficient method (a `spot.peft` config such as
      `LoraConfig`): it names the module each projection (`dense_adapter`),
      each sublayer output (`block_adapter`) and each attention
      (`attention_prefix`, fed by a stack's `prefix_encoder`) gets, in encoder
      and decoder.
  """

  config: T5Config
  prompt_factory: Optional[PromptFactory] = None
  peft: Any = None

  def setup(self):
    c = self.config
    self.token_embedder = L.Embed(c.vocab_size, c.emb_dim, _dtype(c))
    self.encoder = Encoder(c, self.token_embedder, self.prompt_factory, self.peft)
    self.decoder = Decoder(c, self.token_embedder, self.peft)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = True,
             prompt_inputs: Optional[Mapping[str, Array]] = None, *,
             encoder_segment_ids: Optional[Array] = None,
             encoder_positions: Optional[Array] = None) -> tuple[Array, Array]:
    """Returns (encoded [B, S, D], encoder_valid [B, S] bool), prompt included.

    Packed (segment ids and positions [B, S] given), the second value is the
    encoder segment ids [B, S] (0 = padding) that the packed `decode` takes.
    """
    return self.encoder(encoder_input_tokens, not enable_dropout, prompt_inputs,
                        encoder_segment_ids, encoder_positions)

  def decode(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None, *,
             encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None) -> Array:
    """Decoder logits. With `decode=True` it reads and updates the `cache` collection.

    Packed rows (the three segment features given) are for training and
    scoring; decoding with a cache is unpacked only.
    """
    return self.decoder(encoded, encoder_valid, decoder_input_tokens, decoder_target_tokens,
                        not enable_dropout, decode, max_decode_length, encoder_segment_ids,
                        decoder_segment_ids, decoder_positions)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               prompt_inputs: Optional[Mapping[str, Array]] = None, *,
               encoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None) -> Array:
    """Logits [B, T, V]. The four packed features (SeqIO's, [B, S] and [B, T])
    come together or not at all; without them every row is one example."""
    packed = dict(encoder_segment_ids=encoder_segment_ids, encoder_positions=encoder_positions,
                  decoder_segment_ids=decoder_segment_ids, decoder_positions=decoder_positions)
    given = [k for k, v in packed.items() if v is not None]
    if given and len(given) != len(packed):
      raise ValueError(f"A packed batch needs all of {sorted(packed)}; got only {given}. Give "
                       "all four (PromptFeatureConverter(pack=True) emits them) or none.")
    encoded, valid = self.encode(encoder_input_tokens, enable_dropout, prompt_inputs,
                                 encoder_segment_ids=encoder_segment_ids,
                                 encoder_positions=encoder_positions)
    return self.decode(encoded, valid, decoder_input_tokens, decoder_target_tokens,
                       enable_dropout, decode, max_decode_length,
                       encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions)


def init_params(config: T5Config, rng: Optional[jax.Array] = None,
                prompt_factory: Optional[PromptFactory] = None,
                prompt_inputs: Optional[Mapping[str, Any]] = None, peft: Any = None) -> dict:
  """Randomly initialised parameters (unboxed) for `config` (with a prompt / PEFT method)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  model = T5(config, prompt_factory, peft)
  tokens = jnp.ones((1, 2), jnp.int32)
  variables = jax.jit(lambda r: model.init(r, tokens, tokens, tokens, enable_dropout=False,
                                           prompt_inputs=prompt_inputs))(rng)
  return nn.unbox(variables)["params"]


def logical_axes(config: T5Config, prompt_factory: Optional[PromptFactory] = None,
                 prompt_inputs: Optional[Mapping[str, Any]] = None, peft: Any = None) -> dict:
  """The parameter tree of logical axis names (PartitionSpecs), without compute."""
  model = T5(config, prompt_factory, peft)
  tokens = jnp.ones((1, 2), jnp.int32)
  abstract = jax.eval_shape(
      lambda r: model.init(r, tokens, tokens, tokens, enable_dropout=False,
                           prompt_inputs=prompt_inputs), jax.random.PRNGKey(0))
  return nn.get_partition_spec(abstract)["params"]


def param_shapes(config: T5Config, prompt_factory: Optional[PromptFactory] = None,
                 peft: Any = None) -> dict:
  """The parameter tree of `jax.ShapeDtypeStruct`s for `config`, without compute."""
  model = T5(config, prompt_factory, peft)
  tokens = jnp.ones((1, 2), jnp.int32)
  abstract = jax.eval_shape(
      lambda r: model.init(r, tokens, tokens, tokens, enable_dropout=False),
      jax.random.PRNGKey(0))
  return nn.unbox(abstract)["params"]
