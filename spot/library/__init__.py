"""The SPoT prompt library: source prompts keyed by task embeddings.

    from spot.library import PromptLibrary, rank, init_prompt

    lib = PromptLibrary("gs://bucket/prompts")
    lib.add("mnli", prompt, model="t5_1_1_lm100k_base",
            embeddings={"step_10000": early}, task="glue_mnli_v2")
    ranked = rank(lib, target_embedding, metric="avg_tokens", top_k=3)
    init = init_prompt(lib, ranked, "weighted_average")

Entries of other methods (LoRA, (IA)3, ...) hold their trained parameters
(`lib.add_params`, `lib.params`); rankings compare one method's entries, and
`init_prompt` / `lib.prompt` refuse them. See docs/library.md.
"""

from spot.library.entry import ArrayRecord, Entry, ModelInfo, Provenance
from spot.library.errors import (ArchiveError, CorruptEntryError, EntryExistsError,
                                 EntryNotFoundError, LibraryError, LibraryNotFoundError,
                                 LibraryUsageError, LibraryWarning, MethodMismatchError,
                                 ModelMismatchError)
from spot.library.retrieval import pairwise, rank
from spot.library.similarity import METRICS, avg_tokens, per_token, similarities
from spot.library.store import PromptLibrary
from spot.library.transfer import (init_prompt, mixture_tasks, similarity_weights,
                                   weighted_average)

__all__ = [
    "ArchiveError", "ArrayRecord", "CorruptEntryError", "Entry", "EntryExistsError",
    "EntryNotFoundError", "LibraryError", "LibraryNotFoundError", "LibraryUsageError",
    "LibraryWarning", "METRICS", "MethodMismatchError", "ModelInfo", "ModelMismatchError",
    "PromptLibrary",
    "Provenance", "avg_tokens", "init_prompt", "mixture_tasks", "pairwise", "per_token", "rank",
    "similarities", "similarity_weights", "weighted_average",
]
