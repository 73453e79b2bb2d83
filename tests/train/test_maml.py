"""First-order MAML: one outer step against a hand computation, and the query loss falls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spot.train import maml
from spot.train import trainable as trainable_lib
from tests import helpers

INNER_LR, OUTER_LR = 0.5, 0.1


def _batch(seed: int, n: int = 2) -> dict:
  """n examples: target = first two input tokens (a learnable copy task)."""
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, 64, size=(n, 6)).astype(np.int32)
  targets = np.concatenate([inputs[:, :2], np.ones((n, 1), np.int32)], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_input_tokens": np.concatenate([np.zeros((n, 1), np.int32), targets[:, :-1]],
                                                 axis=1),
          "decoder_loss_weights": np.ones_like(targets, np.float32)}


def _setup(prompt_length: int = 2):
  model = helpers.tiny_random_model(prompt_length=prompt_length)
  params = model.init_params(jax.random.PRNGKey(0))
  trainable, frozen = trainable_lib.split(params, "prompt")
  return model, trainable, frozen


def _loss(model, trainable, frozen, batch):
  loss, m = model.loss_fn(trainable_lib.merge(trainable, frozen), batch)
  return loss / m["num_tokens"]


def test_one_outer_step_matches_a_hand_computed_two_task_update():
  model, trainable, frozen = _setup()
  tasks = [(_batch(1), _batch(2)), (_batch(3), _batch(4))]  # (support, query) per task
  tx = optax.sgd(OUTER_LR)
  step = maml.make_outer_step(model, tx, inner_lr=INNER_LR, inner_steps=2)
  support = maml.stack_tasks([s for s, _ in tasks])
  query = maml.stack_tasks([q for _, q in tasks])
  state, metrics = step(maml.init_state(trainable, tx), frozen, support, query,
                        jax.random.PRNGKey(0))

  # By hand: two SGD steps on each support batch, the query gradient there, averaged.
  grad = jax.grad(lambda t, b: _loss(model, t, frozen, b))
  sub = lambda a, b, lr: jax.tree_util.tree_map(lambda x, y: x - lr * y, a, b)
  task_grads, query_losses = [], []
  for s, q in tasks:
    adapted = sub(trainable, grad(trainable, s), INNER_LR)
    adapted = sub(adapted, grad(adapted, s), INNER_LR)
    task_grads.append(grad(adapted, q))
    query_losses.append(float(_loss(model, adapted, frozen, q)))
  mean_grad = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *task_grads)
  expected = sub(trainable, mean_grad, OUTER_LR)

  got = jax.tree_util.tree_leaves(state.trainable)
  want = jax.tree_util.tree_leaves(expected)
  assert len(got) == len(want) == 1  # the prompt only: the base stays frozen
  before = jax.tree_util.tree_leaves(trainable)[0]
  assert float(jnp.max(jnp.abs(got[0] - before))) > 1e-4  # it moved
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(metrics["query_loss"]), np.mean(query_losses), rtol=1e-4)
  assert int(state.step) == 1


def test_zero_inner_steps_is_the_plain_query_gradient():
  model, trainable, frozen = _setup()
  s, q = _batch(5), _batch(6)
  g, _ = maml.task_gradient(model, trainable, frozen, s, q, INNER_LR, 0)
  want = jax.grad(lambda t: _loss(model, t, frozen, q))(trainable)
  np.testing.assert_allclose(np.asarray(jax.tree_util.tree_leaves(g)[0]),
                             np.asarray(jax.tree_util.tree_leaves(want)[0]), rtol=1e-5)


def test_repeated_outer_steps_make_the_upstream_loss_fall():
  model, trainable, frozen = _setup(prompt_length=8)
  tx = optax.adam(1.0)
  step = maml.make_outer_step(model, tx, inner_lr=0.1, inner_steps=1)
  support = maml.stack_tasks([_batch(10, 4), _batch(11, 4)])
  query = maml.stack_tasks([_batch(12, 4), _batch(13, 4)])
  state = maml.init_state(trainable, tx)
  losses = []
  for _ in range(15):
    state, metrics = step(state, frozen, support, query, jax.random.PRNGKey(0))
    losses.append(float(metrics["query_loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[1] < losses[0] and losses[-1] < losses[0] - 0.15, losses
