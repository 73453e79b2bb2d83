"""Soft prompts: modules prepended to the encoder input, and their initializers."""

from spot.prompts.initializers import (class_labels, from_array, from_library, from_npy,
                                       from_string, from_t5x, load_npy, random_uniform,
                                       sampled_vocab, stacked)
from spot.prompts.modules import (FactorizedPrompt, MultiTaskPrompt, PrefixPrompt, Prompt,
                                  prefix, prompt_input_names, prompt_length)

__all__ = [
    "FactorizedPrompt", "MultiTaskPrompt", "PrefixPrompt", "Prompt", "class_labels",
    "from_array", "from_library", "from_npy", "from_string", "from_t5x", "load_npy", "prefix",
    "prompt_input_names", "prompt_length", "random_uniform", "sampled_vocab", "stacked",
]
