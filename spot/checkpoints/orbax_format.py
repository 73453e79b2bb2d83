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

from spot import errors


def _ocp():
  import orbax.checkpoint as ocp  # heavy; only needed for this format
  return ocp


def _damaged(state_dir: epath.Path, e: Exception) -> errors.DataError:
  detail = errors.one_line(str(e))
  detail = detail if len(detail) <= 300 else detail[:300] + "..."  # orbax nests long causes
  return errors.DataError(
      f"Orbax checkpoint {state_dir} cannot be read, it is incomplete or damaged "
      f"({type(e).__name__}: {detail}); copy the complete step directory again or use "
      "another step.")


def metadata(state_dir: epath.Path) -> Any:
  """Any Orbax PyTree's saved tree with per-leaf metadata (shape, dtype), nothing read.

  Raises:
    DataError: the directory's metadata is missing or unreadable.
  """
  ocp = _ocp()
  try:
    return ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
  except Exception as e:  # orbax raises many types for damaged metadata
    raise _damaged(state_dir, e) from e


def metadata_tree(state_dir: epath.Path) -> dict[str, Any]:
  """The saved T5X train state with orbax's per-leaf metadata (shape, dtype), nothing read."""
  tree = metadata(state_dir)
  if not isinstance(tree, dict) or "target" not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise errors.DataError(f"{state_dir} is an Orbax checkpoint but not a T5X train state: "
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
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=subtree, restore_args=restore_args, partial_restore=True))
  except errors.SpotError:
    raise
  except (ValueError, OSError, KeyError) as e:  # tensorstore NOT_FOUND/DATA_LOSS and the like
    if isinstance(e, OSError) and getattr(e, "errno", None) is not None \
        and not isinstance(e, FileNotFoundError):
      raise  # disk errors stay system errors
    raise _damaged(state_dir, e) from e
