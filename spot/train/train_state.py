"""The typed train state: step, trainable parameters and optimizer state, with shardings.

The frozen parameters are not part of it: they enter each step as a constant
argument, so they have no optimizer state and are never checkpointed. A
checkpoint holds `TrainState.to_checkpoint()` (the same `{"trainable",
"opt_state", "step"}` tree spot has always saved).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from spot import partitioning as partitioning_lib

PyTree = Any


@struct.dataclass
class TrainState:
  """One run's state between steps (a PyTree).

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far.
    trainable: the trainable parameter tree (the prompt, by default).
    opt_state: the optax state of `trainable`.
  """

  step: jax.Array
  trainable: PyTree
  opt_state: optax.OptState

  def to_checkpoint(self) -> dict:
    """The tree a run checkpoint stores."""
    return {"trainable": self.trainable, "opt_state": self.opt_state, "step": self.step}

  @classmethod
  def from_checkpoint(cls, tree: Mapping[str, Any]) -> "TrainState":
    return cls(step=tree["step"], trainable=tree["trainable"], opt_state=tree["opt_state"])


def init_state(trainable: PyTree, tx: optax.GradientTransformation, step: int = 0) -> TrainState:
  """A fresh state for `trainable` (pure; jit it with `state_shardings` as out_shardings)."""
  return TrainState(step=jnp.asarray(step, jnp.int32), trainable=trainable,
                    opt_state=tx.init(trainable))


def state_shardings(partitioner: partitioning_lib.Partitioner, trainable_axes: PyTree,
                    abstract_state: TrainState) -> TrainState:
  """NamedShardings of a state: parameters by their logical axes, the optimizer mirroring them.

  Args:
    partitioner: the mesh and rules.
    trainable_axes: logical PartitionSpecs of `abstract_state.trainable`.
    abstract_state: the state's shapes (`jax.eval_shape(init_state, ...)`).
  """
  tr = partitioner.logical_to_mesh(trainable_axes, abstract_state.trainable)
  opt = partitioner.optimizer_state_shardings(abstract_state.opt_state, tr,
                                              abstract_state.trainable)
  return TrainState(step=partitioner.replicated, trainable=tr, opt_state=opt)


def create_state(partitioner: partitioning_lib.Partitioner, tx: optax.GradientTransformation,
                 trainable: PyTree, trainable_axes: PyTree) -> tuple[TrainState, TrainState]:
  """(state, shardings): a fresh state built on its devices, sharded as `state_shardings`."""
  abstract = jax.eval_shape(lambda t: init_state(t, tx), trainable)
  shardings = state_shardings(partitioner, trainable_axes, abstract)
  trainable = jax.device_put(trainable, shardings.trainable)
  init = partitioner.partition(lambda t: init_state(t, tx), in_shardings=(shardings.trainable,),
                               out_shardings=shardings)
  return init(trainable), shardings
