"""Effective weights from sparse deltas: W + scatter_add(indices, values)."""

from __future__ import annotations

import jax


def apply_delta(weight: jax.Array, indices: jax.Array, values: jax.Array) -> jax.Array:
    """W with `values` added at the flat positions `indices` (in W's dtype)."""
    flat = weight.reshape(-1)
    return flat.at[indices].add(values.astype(weight.dtype)).reshape(weight.shape)
