"""Vocabulary size and position limits of a model, and growing its vocabulary.

When a tokenizer gains tokens (Llama's added `[PAD]`, an end-of-turn token), the
embedding and an untied output head grow to the next multiple of 8, as DeepSpeed-Chat
does; new rows start at the mean of the existing ones, a deterministic choice. Which
dimensions are vocabulary dimensions is read from the parameters' logical axes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from jax_sft.models import registry


def max_positions(hf_config: Mapping) -> int:
    """The longest sequence the model's position scheme is configured for."""
    return int(hf_config.get("n_positions") or hf_config["max_position_embeddings"])


def resize_vocab(
    hf_config: dict, flat: dict[str, np.ndarray], n_tokens: int
) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, flat state) with room for `n_tokens`; unchanged when there already is."""
    if n_tokens <= hf_config["vocab_size"]:
        return hf_config, flat
    new_size = 8 * -(-n_tokens // 8)
    abstract = nnx.eval_shape(lambda: registry.build_model(hf_config))
    axes = {
        registry.path_str(p): v.get_metadata()["axes"]
        for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }
    out = dict(flat)
    for path, names in axes.items():
        if "vocab" not in names:
            continue
        dim = names.index("vocab")
        old = flat[path]
        mean = old.astype(np.float64).mean(axis=dim, keepdims=True).astype(old.dtype)
        extra = np.repeat(mean, new_size - old.shape[dim], axis=dim)
        out[path] = np.concatenate([old, extra], axis=dim)
    return {**hf_config, "vocab_size": new_size}, out
