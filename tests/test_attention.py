"""The blocked causal attention equals plain softmax attention, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_sft.models.attention import causal_mask
from jax_sft.models.blocked_attention import BLOCK, causal_attention


def plain_attention(q, k, v, allowed, scale):
    """Softmax attention written out: every score, one softmax, grouped heads repeated."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def masks(kind: str, batch: int, seq: int):
    mask = np.ones((batch, seq), np.int32)
    segments = None
    if kind == "left_padding":
        mask[0, :37] = 0
    if kind == "packed":
        segments = np.zeros((batch, seq), np.int32)
        segments[:, 90:] = 1
        segments[:, 170:] = 2
        mask[1, 190:] = 0
    return causal_mask(jnp.asarray(mask), None if segments is None else jnp.asarray(segments))


@pytest.mark.parametrize("kind", ["causal", "left_padding", "packed"])
def test_blocked_attention_matches_plain_attention_and_its_gradients(kind):
    batch, seq, heads, kv_heads, dim = 2, BLOCK + 72, 4, 2, 16  # a partial last block
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (batch, seq, heads, dim))
    k, v = (jax.random.normal(key, (batch, seq, kv_heads, dim)) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], q.shape)
    allowed = masks(kind, batch, seq)
    # Rows that may attend nothing (left padding) are never used: score only real rows.
    real = jnp.any(allowed[:, 0], axis=-1)[:, :, None, None]
    scale = dim**-0.5

    def scored(attention):
        return lambda q, k, v: jnp.sum(attention(q, k, v, allowed, scale) * cotangent * real)

    ours = jax.jit(jax.value_and_grad(scored(causal_attention), argnums=(0, 1, 2)))(q, k, v)
    plain = jax.value_and_grad(scored(plain_attention), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(ours[0], plain[0], atol=1e-3)  # a sum of 25,600 terms
    for got, want in zip(ours[1], plain[1], strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    out = causal_attention(q, k, v, allowed, scale) * real
    np.testing.assert_allclose(out, plain_attention(q, k, v, allowed, scale) * real, atol=1e-5)
