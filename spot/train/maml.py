"""First-order MAML (Finn et al., 2017; the first-order variant) over the trainable parameters.

One outer step on a meta-batch of T tasks, each with a support and a query batch:

    for each task t:
      theta_t = theta;  repeat inner_steps:  theta_t -= inner_lr * grad L_support_t(theta_t)
      g_t = grad L_query_t(theta_t)                  (first order: no second derivatives)
    theta = outer optimizer(theta, mean_t g_t)

Only the trainable tree (the prompt, or a PEFT method's parameters) adapts;
the frozen base enters as a constant, as in the trainer. The loss is the
model's summed loss per target token (so `inner_lr` does not depend on the
batch's token count). Batches of a meta-batch are stacked with a leading task
axis: `support[k]` is [T, B, ...]; tasks are processed one after the other
(`jax.lax.map`), so memory does not grow with T.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from spot.train import trainable as trainable_lib
from spot.train.models import EncoderDecoderModel

PyTree = Any
Batch = Mapping[str, jax.Array]


class MamlState(NamedTuple):
  """The outer loop's state: updates applied, trainable parameters, outer optimizer state."""

  step: jax.Array
  trainable: PyTree
  opt_state: optax.OptState


def init_state(trainable: PyTree, tx: optax.GradientTransformation) -> MamlState:
  return MamlState(jnp.zeros((), jnp.int32), trainable, tx.init(trainable))


def token_loss(model: EncoderDecoderModel, trainable: PyTree, frozen: PyTree, batch: Batch,
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
  """The model's summed loss divided by the batch's target tokens (a scalar)."""
  loss, metrics = model.loss_fn(trainable_lib.merge(trainable, frozen), batch, dropout_rng)
  return loss / jnp.maximum(metrics["num_tokens"], 1.0)


def adapt(model: EncoderDecoderModel, trainable: PyTree, frozen: PyTree, support: Batch,
          inner_lr: float, inner_steps: int, rng: Optional[jax.Array] = None) -> PyTree:
  """`trainable` after `inner_steps` plain SGD steps on the support batch (one task)."""
  grad = jax.grad(lambda p, r: token_loss(model, p, frozen, support, r))

  def sgd(i, params):
    g = grad(params, None if rng is None else jax.random.fold_in(rng, i))
    return jax.tree_util.tree_map(lambda p, d: p - inner_lr * d.astype(p.dtype), params, g)

  return jax.lax.fori_loop(0, inner_steps, sgd, trainable)


def task_gradient(model: EncoderDecoderModel, trainable: PyTree, frozen: PyTree, support: Batch,
                  query: Batch, inner_lr: float, inner_steps: int,
                  rng: Optional[jax.Array] = None) -> tuple[PyTree, dict]:
  """(first-order meta-gradient of one task, its support/query losses).

  The gradient is the query loss's at the adapted parameters; the adaptation is
  treated as a constant (`stop_gradient`), the first-order approximation.
  """
  support_rng, query_rng = (None, None) if rng is None else jax.random.split(rng)
  adapted = jax.lax.stop_gradient(adapt(model, trainable, frozen, support, inner_lr,
                                        inner_steps, support_rng))
  query_loss, g = jax.value_and_grad(
      lambda p: token_loss(model, p, frozen, query, query_rng))(adapted)
  metrics = {"support_loss": token_loss(model, trainable, frozen, support),
             "query_loss": query_loss}
  return g, metrics


def meta_gradient(model: EncoderDecoderModel, trainable: PyTree, frozen: PyTree,
                  support: Batch, query: Batch, inner_lr: float, inner_steps: int,
                  rng: Optional[jax.Array] = None) -> tuple[PyTree, dict]:
  """The task gradients averaged over the meta-batch ([T, B, ...] batches) and mean metrics."""
  num_tasks = jax.tree_util.tree_leaves(support)[0].shape[0]
  rngs = (jnp.zeros((num_tasks, 2), jnp.uint32) if rng is None
          else jax.random.split(rng, num_tasks))

  def one(args):
    s, q, r = args
    return task_gradient(model, trainable, frozen, s, q, inner_lr, inner_steps,
                         None if rng is None else r)

  grads, metrics = jax.lax.map(one, (dict(support), dict(query), rngs))
  mean = lambda x: jnp.mean(x, axis=0)
  return jax.tree_util.tree_map(mean, grads), jax.tree_util.tree_map(mean, metrics)


def make_outer_step(model: EncoderDecoderModel, tx: optax.GradientTransformation, *,
                    inner_lr: float, inner_steps: int, use_dropout: bool = False
                    ) -> Callable[..., tuple[MamlState, dict]]:
  """A jitted `step(state, frozen, support, query, rng) -> (state, metrics)`: one outer update.

  `support` / `query`: {feature: [T, B, L]} (T tasks of a meta-batch). `rng` seeds
  dropout when `use_dropout` (else it is unused). Metrics: mean `support_loss`
  (before adaptation) and `query_loss` (after), per token.
  """
  if inner_steps < 0:
    raise ValueError(f"inner_steps must be >= 0, got {inner_steps}.")

  def step(state: MamlState, frozen: PyTree, support: Batch, query: Batch,
           rng: jax.Array) -> tuple[MamlState, dict]:
    rng = jax.random.fold_in(rng, state.step) if use_dropout else None
    grads, metrics = meta_gradient(model, state.trainable, frozen, support, query, inner_lr,
                                   inner_steps, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    return MamlState(state.step + 1, trainable, opt_state), metrics

  return jax.jit(step)


def stack_tasks(batches: list[Mapping[str, Any]]) -> dict[str, jax.Array]:
  """T batches of the same shapes -> one batch {feature: [T, B, ...]} (features all share)."""
  keys = set(batches[0])
  for b in batches[1:]:
    keys &= set(b)
  return {k: jnp.stack([jnp.asarray(b[k]) for b in batches]) for k in sorted(keys)}
