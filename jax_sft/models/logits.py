"""Logits of our Flax model for a flat state, the JAX side of every logit comparison."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_sft.models import registry


def jax_logits(
    config: dict, flat: dict[str, np.ndarray], batch: dict[str, np.ndarray]
) -> np.ndarray:
    """fp32 logits of the model `config` describes, holding `flat`, on `batch`."""
    model = registry.model_from_flat(config, flat.items())
    forward = jax.jit(lambda m, ids, mask, pos: m(ids, mask, pos))
    ids, mask, pos = (jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "positions"))
    return np.asarray(forward(model, ids, mask, pos))
