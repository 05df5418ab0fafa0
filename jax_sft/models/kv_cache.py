"""A preallocated key/value cache for incremental decoding, shared by every family.

Layout. Each layer owns keys and values of shape [batch, kv_heads, max_len, head_dim]
(head-major: the layout both attention products read directly, so a decode step never
transposes the whole cache, only the new chunk it writes); one `index` (the slot the
next chunk is written at) and one `mask` [batch, max_len] (1 where a slot holds a real
token) serve all layers. A batch of prompts is left-padded
to a common length, so slot s of every row is written at the same step and one scalar
`index` suffices; a chunk of q tokens fills slots index .. index + q - 1.

Masking rule. A query in slot i may attend the key in slot j when j <= i and slot j holds
a real token: slots fill in order, so this is "cached positions <= the query's position,
left padding excluded". Slots not yet written are masked like padding.

Positions. A token's position counts the real tokens before it in its row, exactly as
`attention.default_positions` does for an uncached forward: a left-padded row sees the
positions of the unpadded row, and decode steps continue from each row's own length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp

from jax_sft.models.attention import head_major_attention, positions_and_mask
from jax_sft.models.blocked_attention import causal_attention

LayerKV = tuple[jax.Array, jax.Array, jax.Array]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    """Every layer's keys and values (one array each per layer), the real-token mask of
    the slots and the next write slot; a pytree, so it passes through jit and loops."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array

    @classmethod
    def init(
        cls,
        *,
        batch: int,
        max_len: int,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: jnp.dtype,
    ) -> KVCache:
        """An empty cache: zeros everywhere, nothing real, writing starts at slot 0."""
        shape = (batch, kv_heads, max_len, head_dim)
        return cls(
            keys=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            mask=jnp.zeros((batch, max_len), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]

    def grown(self, max_len: int) -> KVCache:
        """The same cache with room for `max_len` slots: new slots are empty (masked)."""
        extra = max_len - self.max_len
        if extra <= 0:
            return self
        slots = ((0, 0), (0, 0), (0, extra), (0, 0))
        return replace(
            self,
            keys=tuple(jnp.pad(k, slots) for k in self.keys),
            values=tuple(jnp.pad(v, slots) for v in self.values),
            mask=jnp.pad(self.mask, ((0, 0), (0, extra))),
        )


def begin(
    cache: KVCache | None,
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    positions: jax.Array | None,
    segment_ids: jax.Array | None,
) -> tuple[KVCache | None, jax.Array, jax.Array]:
    """What a forward starts with: (cache, positions, allowed). Without a cache this is
    `positions_and_mask`; with one, the chunk is recorded in the cache's mask and its
    queries may attend every slot up to their own (allowed: [batch, 1, seq, max_len])."""
    if cache is None:
        return None, *positions_and_mask(input_ids, attention_mask, positions, segment_ids)
    if segment_ids is not None:
        raise ValueError("packed segments cannot be decoded with a KV cache")
    batch, seq = input_ids.shape
    chunk = (
        jnp.ones((batch, seq), jnp.int32)
        if attention_mask is None
        else attention_mask.astype(jnp.int32)
    )
    mask = jax.lax.dynamic_update_slice(cache.mask, chunk, (0, cache.index))
    if positions is None:
        before = jnp.sum(cache.mask, axis=1, keepdims=True)
        positions = jnp.maximum(before + jnp.cumsum(chunk, axis=1) - 1, 0)
    query_slot = cache.index + jnp.arange(seq)
    causal = jnp.arange(cache.max_len)[None, :] <= query_slot[:, None]
    allowed = causal[None] & mask.astype(bool)[:, None, :]
    return replace(cache, mask=mask), positions, allowed[:, None]


def per_layer(cache: KVCache | None, num_layers: int) -> list[LayerKV | None]:
    """Each layer's (keys, values, index), or None for every layer without a cache."""
    if cache is None:
        return [None] * num_layers
    return [(k, v, cache.index) for k, v in zip(cache.keys, cache.values, strict=True)]


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    allowed: jax.Array,
    scale: float,
    kv: LayerKV | None,
) -> tuple[jax.Array, LayerKV | None]:
    """Attention of q over k, v, or, given a layer's cache, over the cache with k, v
    written at its index; returns (output, the layer's updated cache or None)."""
    if kv is None:
        return causal_attention(q, k, v, allowed, scale), None
    keys, values, index = kv
    start = (0, 0, index, 0)
    k, v = (jnp.swapaxes(t, 1, 2).astype(keys.dtype) for t in (k, v))
    keys = jax.lax.dynamic_update_slice(keys, k, start)
    values = jax.lax.dynamic_update_slice(values, v, start)
    return head_major_attention(q, keys, values, allowed, scale), (keys, values, index)


def finish(
    cache: KVCache | None, logits: jax.Array, kvs: list[LayerKV | None], seq: int
) -> jax.Array | tuple[jax.Array, KVCache]:
    """What a forward returns: logits alone without a cache; otherwise (logits, the cache
    holding every layer's new keys and values, its write slot moved past the chunk)."""
    if cache is None:
        return logits
    return logits, replace(
        cache,
        keys=tuple(kv[0] for kv in kvs),
        values=tuple(kv[1] for kv in kvs),
        index=cache.index + seq,
    )
