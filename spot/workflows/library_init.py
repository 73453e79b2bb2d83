"""The `from_library.gin` prompt initializer: a library entry resolved at the edge.

`spot.prompts` knows nothing of the library; this configurable, which sits
above both, opens the library, checks the entry against the run's base model
and hands the prompts package a loader (`prompts.from_library`).
"""

from __future__ import annotations

from typing import Optional

from spot import prompts


def from_library(library_path: str, name: str, model_family: Optional[str] = None,
                 model_size: Optional[str] = None) -> prompts.initializers.Initializer:
  """From the source prompt of a prompt-library entry of the run's base model.

  The entry's embed dim must be the run's, and when `model_family` and
  `model_size` are known (from_library.gin binds the model gins' MODEL_FAMILY
  and MODEL_SIZE) its model name must be of that family and size: an entry
  for t5_1_1_lm100k_base fits a t5_1_1 base run, not a t5_1_1 tiny one.
  """

  def load(embed_dim: int):
    from spot.library import PromptLibrary  # pylint: disable=g-import-not-at-top
    from spot.library.entry import (  # pylint: disable=g-import-not-at-top
        check_prompt_entry, check_run_model)
    lib = PromptLibrary(library_path)
    entry = check_prompt_entry(lib.entry(name))  # a LoRA entry is no prompt to start from
    check_run_model(entry, embed_dim, model_family, model_size)
    return lib.prompt(name)

  return prompts.from_library(load, f"library entry {name!r} in {library_path}")
