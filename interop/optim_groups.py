"""Which parameters get weight decay: DeepSpeed-Chat's rule, on Hugging Face names.

DeepSpeed-Chat's `get_optimizer_grouped_parameters` exempts every parameter whose name
contains one of these substrings. Both backends apply the rule to the HF name of each
parameter, so they decay exactly the same set (GPT-2's `ln_1.weight`, which matches none
of them, is decayed there and here alike).
"""

from __future__ import annotations

NO_DECAY_SUBSTRINGS = (
    "bias",
    "layer_norm.weight",
    "layernorm.weight",
    "norm.weight",
    "ln_f.weight",
)


def decays(hf_name: str) -> bool:
    """True when weight decay applies to the parameter with this HF name."""
    return not any(s in hf_name for s in NO_DECAY_SUBSTRINGS)
