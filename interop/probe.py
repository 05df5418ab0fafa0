"""The deterministic probe batch used to compare two models' logits.

Four rows cover the cases that break ports: a full row, right padding, left padding and
a short row. Positions follow the real tokens (pads get 0), the convention both backends
use, so left-padded rows are scored like unpadded ones. Only real tokens are compared.
"""

from __future__ import annotations

import numpy as np

PROBE_SEED = 0


def probe_batch(
    vocab_size: int, *, seq_len: int = 16, seed: int = PROBE_SEED
) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, positions: int64 arrays [4, seq_len]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(4, seq_len), dtype=np.int64)
    mask = np.ones((4, seq_len), np.int64)
    mask[1, seq_len - seq_len // 4 :] = 0
    mask[2, : seq_len // 3] = 0
    mask[3, seq_len // 2 :] = 0
    ids = np.where(mask == 1, ids, 0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return {"input_ids": ids, "attention_mask": mask, "positions": positions}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| in float64; NaN on one side only counts as infinite, on both as equal."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(x - y)
    diff[np.isnan(x) & np.isnan(y)] = 0.0
    return float(np.max(np.where(np.isnan(diff), np.inf, diff), initial=0.0))


def max_abs_logit_diff(a: np.ndarray, b: np.ndarray, attention_mask: np.ndarray) -> float:
    """Largest |a - b| over the logits of real (non-pad) tokens."""
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: {a.shape} vs {b.shape}")
    real = attention_mask.astype(bool)
    return max_abs_diff(a[real], b[real])
