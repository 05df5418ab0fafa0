"""Causal-LM cross entropy, summed, with the count it should be averaged over.

Labels follow the HF convention (aligned with the inputs, `IGNORE` = -100 = not scored)
and are shifted here: position t predicts label t+1. Returning (sum, count) rather than a
mean lets gradient accumulation average over all non-masked tokens of the global batch,
not over each micro-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interop.data.examples import IGNORE


def loss_sum_and_count(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of token NLLs in fp32, number of scored tokens)."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum((logz - picked) * valid), jnp.sum(valid)


def scored_tokens(labels: jax.Array) -> jax.Array:
    """How many tokens a batch contributes to the shifted loss."""
    return jnp.sum(labels[..., 1:] != IGNORE)
