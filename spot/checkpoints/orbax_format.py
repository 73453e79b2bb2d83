"""The newer T5X Orbax layout: `checkpoint_<step>/state/` is an Orbax PyTree.

T5X's `OrbaxCheckpointManagerInterface` saves the train state dict
`{"target": params, "state": {"step", "param_states"}}` with
`ocp.PyTreeCheckpointHandler(use_ocdbt=True)` under the item name `state`
(plus a `dataset` item for the input pipeline, which we ignore). Reading goes
through orbax-checkpoint itself; subtrees are restored with
`partial_restore=True` so asking for the parameters, or for one variable,
never reads the optimizer state.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from etils import epath


def _ocp():
  import orbax.checkpoint as ocp  # heavy; only needed for this format
  return ocp


def metadata_tree(state_dir: epath.Path) -> dict[str, Any]:
  """The saved tree with orbax's per-leaf metadata (shape, dtype), nothing read."""
  ocp = _ocp()
  tree = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
  if not isinstance(tree, dict) or "target" not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(f"{state_dir} is an Orbax checkpoint but not a T5X train state: "
                     f"top-level keys {keys}, expected 'target' and 'state'.")
  return tree


def restore(state_dir: epath.Path, subtree: dict[str, Any],
            dtypes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
  """Restores the leaves of `subtree` (a pruned metadata tree) as numpy arrays.

  Args:
    state_dir: the Orbax `state` directory.
    subtree: the part of `metadata_tree(state_dir)` to read, e.g.
      {"target": tree["target"]}.
    dtypes: optional {top-level key: dtype} to cast leaves while reading.
  """
  ocp = _ocp()
  dtypes = dtypes or {}
  restore_args = {
      key: jax.tree_util.tree_map(
          lambda _, d=dtypes.get(key): ocp.RestoreArgs(restore_type=np.ndarray, dtype=d), value)
      for key, value in subtree.items()}
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=subtree, restore_args=restore_args, partial_restore=True))
