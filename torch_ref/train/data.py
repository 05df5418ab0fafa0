"""Each rank's share of the run's batches (`interop.data.run_data`, as the JAX engine's).

The global batch of optimizer step s is `Batches.batch(s)`: [accum * micro * dp, seq]
numpy arrays, a pure function of (seed, s). The JAX step reshapes it to
[accum, micro * dp, seq] and shards dim 1 over the data-parallel ranks, so micro-batch a
of rank r is rows a * (micro * dp) + r * micro ... + micro. `micro_batches` takes exactly
those rows, so every rank of every backend sees the same tokens at the same step.

Eval batches are [eval_micro * dp, seq] (not shuffled); rank r evaluates rows
r * eval_micro ... + eval_micro and the sums are all-reduced. Micro-batches of packed
rows carry their segment ids, from which `loss.forward_loss` keeps attention inside
each example.
"""

from __future__ import annotations

import numpy as np
import torch

MODEL_KEYS = ("input_ids", "attention_mask", "positions", "labels")


def rows(
    batch: dict[str, np.ndarray], start: int, size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Rows start ... start + size of a batch as int64 tensors on `device`, with their
    `segment_ids` when a row holds more than one example (decided here, on the host)."""
    keys = MODEL_KEYS
    if "segment_ids" in batch and batch["segment_ids"][start : start + size].max() > 1:
        keys = (*MODEL_KEYS, "segment_ids")
    return {
        k: torch.from_numpy(batch[k][start : start + size].astype(np.int64)).to(device)
        for k in keys
    }


def micro_batches(
    batch: dict[str, np.ndarray], accum: int, micro: int, dp: int, rank: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """This rank's `accum` micro-batches of a global batch (see the module docstring)."""
    return [rows(batch, a * micro * dp + rank * micro, micro, device) for a in range(accum)]
