"""Effective weights from sparse deltas: W + scatter_add(indices, values)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def apply_delta(weight: jax.Array, indices: jax.Array, values: jax.Array) -> jax.Array:
    """W with `values` added at the flat positions `indices` (in W's dtype)."""
    flat = weight.reshape(-1)
    return flat.at[indices].add(values.astype(weight.dtype)).reshape(weight.shape)


def apply_deltas(
    params: Mapping[str, jax.Array],
    indices: Mapping[str, jax.Array],
    values: Mapping[str, jax.Array],
) -> dict[str, jax.Array]:
    """A flat parameter dict with every delta applied; untouched entries are the same arrays."""
    return {
        path: apply_delta(w, indices[path], values[path]) if path in indices else w
        for path, w in params.items()
    }


def zero_values(indices: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The starting values: fp32 zeros, one per selected entry."""
    return {path: jnp.zeros(idx.shape, jnp.float32) for path, idx in indices.items()}
