"""Masks, positions and the cached (decoding) attention shared by every family.

One mask rule serves padding (left or right), packing and causality: query i may attend
key j when j <= i, key j is a real token, and both carry the same segment id. Rows that
may attend nothing (a left-padding query) get uniform weights instead of NaNs; their
outputs are never used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_positions(attention_mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Position of each token within its sequence (or packed segment); pads get 0.

    A left-padded row thus sees the same positions as the unpadded row would.
    """
    mask = attention_mask.astype(jnp.int32)
    if segment_ids is None:
        return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    # Count real tokens seen so far within the current segment.
    idx = jnp.arange(mask.shape[-1])
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=-1,
    )
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    csum = jnp.cumsum(mask, axis=-1)
    before = jnp.take_along_axis(csum - mask, start_idx, axis=-1)
    return jnp.maximum(csum - before - 1, 0)


def causal_mask(attention_mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Boolean [batch, 1, q, k]: causal, key not padding, same segment."""
    seq = attention_mask.shape[-1]
    allowed = jnp.tril(jnp.ones((seq, seq), bool))[None, :, :]
    allowed = allowed & attention_mask.astype(bool)[:, None, :]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return allowed[:, None, :, :]


def positions_and_mask(
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    positions: jax.Array | None,
    segment_ids: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """What every family's forward starts with: (positions, allowed) from its optional
    inputs; no mask means every token is real."""
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
        positions = default_positions(attention_mask, segment_ids)
    return positions, causal_mask(attention_mask, segment_ids)


def head_major_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, scale: float
) -> jax.Array:
    """Softmax attention (fp32 scores) with grouped key/value heads, over keys and values
    stored head-major, [batch, kv_heads, k_len, head_dim] (the KV cache's layout).

    q: [batch, q_len, heads, head_dim]; allowed: boolean, broadcastable to [batch, 1,
    q_len, k_len]; the result is [batch, q_len, heads, head_dim] in q's dtype.

    Both products are batched over (batch, kv_heads) with the query heads of a group and
    their positions as the rows of one matrix: the plain batched matmul XLA's CPU backend
    hands to its fast kernels (a decode step's attention runs about 3x faster than with
    the key axis between batch and heads).
    """
    b, s, h, d = q.shape
    kv, t = k.shape[1], k.shape[2]
    g = h // kv
    rows = jnp.transpose(q.reshape(b, s, kv, g, d), (0, 2, 3, 1, 4)).reshape(b, kv, g * s, d)
    dims = (((3,), (3,)), ((0, 1), (0, 1)))
    scores = jax.lax.dot_general(rows, k, dims, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(b, kv, g, s, t)
    scores = jnp.where(allowed[:, :, None], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * s, t)
    out = jax.lax.dot_general(weights, v, (((3,), (2,)), ((0, 1), (0, 1))))
    return jnp.transpose(out.reshape(b, kv, g, s, d), (0, 3, 1, 2, 4)).reshape(b, s, h, d)
