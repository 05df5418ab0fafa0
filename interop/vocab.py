"""The vocabulary-growth rule both trainers apply, and a model's position limit.

When a tokenizer gains tokens (Llama's added `[PAD]`, an end-of-turn token), the
embedding and an untied output head grow to the next multiple of 8, as DeepSpeed-Chat
does; new rows start at the mean of the existing ones (computed in float64, rounded to
the stored dtype), a deterministic choice both backends can reproduce bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def padded_vocab(n_tokens: int) -> int:
    """The smallest multiple of 8 that holds `n_tokens`."""
    return 8 * -(-n_tokens // 8)


def grown(weights: np.ndarray, new_size: int, axis: int) -> np.ndarray:
    """`weights` extended along its vocabulary `axis` to `new_size` with mean rows."""
    mean = weights.astype(np.float64).mean(axis=axis, keepdims=True).astype(weights.dtype)
    extra = np.repeat(mean, new_size - weights.shape[axis], axis=axis)
    return np.concatenate([weights, extra], axis=axis)


def max_positions(hf_config: Mapping) -> int:
    """The longest sequence the model's position scheme is configured for."""
    return int(hf_config.get("n_positions") or hf_config["max_position_embeddings"])
