"""Rotary position embeddings with the Hugging Face "rotate half" layout.

Inverse frequencies are computed once in numpy from the HF config (`rope_parameters` in
transformers 5, or the older `rope_theta`/`rope_scaling` keys), so the traced forward only
multiplies positions by a constant.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from interop.errors import UserError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(hf: dict) -> dict:
    """The RoPE settings of an HF config as one dict with `rope_type` and `rope_theta`."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params = {**legacy, **params}
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    return params


def inverse_frequencies(head_dim: int, params: dict) -> np.ndarray:
    """fp32 inverse frequencies [head_dim // 2], as transformers computes them."""
    kind = params["rope_type"]
    if kind not in SUPPORTED_ROPE_TYPES:
        raise UserError(
            f"config.json: rope type '{kind}' is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UserError("config.json: partial_rotary_factor != 1 is not supported")
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    inv = (1.0 / (np.float32(params["rope_theta"]) ** exponents)).astype(np.float32)
    if kind == "linear":
        return (inv / np.float32(params["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_table(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) [batch, seq, 1, head_dim] in fp32 for positions [batch, seq]; computed
    once per forward and shared by every layer (and by q and k)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, table: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim] by its `rope_table`."""
    cos, sin = (t.astype(x.dtype) for t in table)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
