"""Batched autoregressive generation with a preallocated KV cache, for every model family.

Flow. Prompts are left-padded to one bucket length, so every row's last prompt token sits
in the bucket's last slot. A jitted `prefill` runs the bucket through the model, filling
the cache (see `models.kv_cache` for its layout and masking rule) and sampling the first
new token; a jitted `decode` then feeds one token per step inside a `lax.while_loop`,
stopping early once every row has produced `eos_token_id`. The cache starts with room
for the bucket and the first SEGMENT new tokens and grows by SEGMENT slots between loops,
so a step attends roughly the slots it needs rather than all that the last step will
(attention reads the whole cache each step: on a CPU that read is a quarter of a decode
step's time at batch 8, and segments cut it by about a quarter for 128 new tokens).
Each row keeps its own positions (left padding is not counted), so a padded prompt
continues exactly as it would alone.

Buckets. The bucket is the next power of two at or above the longest prompt, at least
`MIN_BUCKET`. Compiled programs depend only on shapes and static settings: (batch,
bucket, max_new_tokens, sampling settings, model). `jax.jit` caches programs on exactly
those, so a prompt of another length in the same bucket reuses them; `compilations()`
counts them.

Sampling. Greedy (argmax) when the temperature is 0; otherwise logits are divided by
the temperature, cut to the top k and then to the smallest set whose probability reaches
top p (the order `transformers` applies them in), and sampled with `jax.random`. Step i
draws with `fold_in(key(seed), i)`, so a seed reproduces its tokens.

Recompute. `recompute=True` runs the whole sequence through the model at every step, no
cache: the slow, obviously correct reference the cached path is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.errors import UserError

MIN_BUCKET = 16
SEGMENT = 32


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; static (hashable), so each setting compiles once."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


def bucket_length(longest: int) -> int:
    """The padded prompt length: the next power of two >= `longest`, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << (longest - 1).bit_length())


def left_pad(prompts: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) [batch, length] with each prompt flush right."""
    ids = np.full((len(prompts), length), pad, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = 1
    return ids, mask


def next_token(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row [batch] from fp32 logits [batch, vocab]."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p is not None:
        ranked = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ranked, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < sampling.top_p  # the first always stays
        cutoff = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def segment_ends(steps: int) -> list[int]:
    """Where each decode segment stops (exclusive step index): every SEGMENT steps, and at
    `steps`. Steps 1 .. steps - 1 are decoded; none when steps is 1."""
    return [min(end, steps) for end in range(1 + SEGMENT, steps + SEGMENT, SEGMENT)]


def first_end(steps: int) -> int:
    """The end of the first segment (1 when nothing is decoded): the prefill cache holds
    the bucket and the slots of the steps before it."""
    ends = segment_ends(steps)
    return ends[0] if ends else 1


def _decode_loop(step, first: jax.Array, carry, ends: list[int], eos: int, pad: int, grow):
    """Tokens [batch, ends[-1]]: `first`, then `step(carry, token, i) -> (carry, token)`
    until every row has emitted eos; finished rows get `pad`. One `while_loop` per
    segment; `grow(carry, end)` readies the carry for the steps before `end`."""
    steps = ends[-1] if ends else 1
    out = jnp.full((first.shape[0], steps), pad, jnp.int32).at[:, 0].set(first)

    def body(state):
        i, token, done, carry, out = state
        carry, new = step(carry, token, i)
        new = jnp.where(done, pad, new)
        return i + 1, new, done | (new == eos), carry, out.at[:, i].set(new)

    state = (jnp.int32(1), first, first == eos, carry, out)
    for end in ends:
        i, token, done, carry, out = state
        state = jax.lax.while_loop(
            lambda s, end=end: (s[0] < end) & ~jnp.all(s[2]),
            body,
            (i, token, done, grow(carry, end), out),
        )
    return state[-1]


@partial(jax.jit, static_argnames=("graphdef", "steps", "sampling"))
def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    sampling: Sampling,
) -> tuple[jax.Array, object]:
    """The prompts [batch, bucket] through the model into a fresh cache sized for
    `steps` new tokens: (the first new token of each row, the cache)."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(ids.shape[0], ids.shape[1] + first_end(steps) - 1)
    logits, cache = model(ids, mask, cache=cache)
    return next_token(logits[:, -1], jax.random.fold_in(key, 0), sampling), cache


@partial(jax.jit, static_argnames=("graphdef", "steps", "sampling", "eos", "pad"))
def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    first: jax.Array,
    cache: object,
    key: jax.Array,
    *,
    steps: int,
    sampling: Sampling,
    eos: int,
    pad: int,
) -> jax.Array:
    """Tokens [batch, steps] from the first one, one step per token on the cache; the
    cache grows by a segment at a time, so a step attends only the slots it could need."""
    model = nnx.merge(graphdef, params)
    bucket = cache.max_len - first_end(steps) + 1

    def step(cache, token, i):
        logits, cache = model(token[:, None], cache=cache)
        return cache, next_token(logits[:, -1], jax.random.fold_in(key, i), sampling)

    def grow(cache, end):
        return cache.grown(bucket + end - 1)

    return _decode_loop(step, first, cache, segment_ends(steps), eos, pad, grow)


@partial(jax.jit, static_argnames=("graphdef", "steps", "sampling", "eos", "pad"))
def recomputed(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    sampling: Sampling,
    eos: int,
    pad: int,
) -> jax.Array:
    model = nnx.merge(graphdef, params)
    batch, bucket = ids.shape
    ids = jnp.concatenate([ids, jnp.full((batch, steps - 1), pad, jnp.int32)], axis=1)
    mask = jnp.concatenate([mask, jnp.zeros((batch, steps - 1), jnp.int32)], axis=1)
    first = next_token(model(ids, mask)[:, bucket - 1], jax.random.fold_in(key, 0), sampling)

    def step(seq, token, i):
        ids, mask = seq
        slot = bucket + i - 1
        ids, mask = ids.at[:, slot].set(token), mask.at[:, slot].set(1)
        logits = model(ids, mask)[:, slot]
        return (ids, mask), next_token(logits, jax.random.fold_in(key, i), sampling)

    ends = [steps] if steps > 1 else []
    return _decode_loop(step, first, (ids, mask), ends, eos, pad, lambda carry, _: carry)


def compilations() -> int:
    """How many programs the generation functions hold compiled (one per shape bucket and
    setting); tests use it to show that a bucket is reused."""
    return prefill._cache_size() + decode._cache_size() + recomputed._cache_size()


def generate(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    eos_token_id: int | None,
    pad_token_id: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    recompute: bool = False,
) -> list[list[int]]:
    """The new tokens of each prompt (eos included when reached), from the model
    `nnx.merge(graphdef, params)`; greedy unless a temperature is given."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("generate: every prompt needs at least one token")
    if max_new_tokens < 1:
        raise UserError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise UserError("generate: temperature must be >= 0 and top_k >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"generate: top_p must be in (0, 1], got {top_p}")
    ids, mask = left_pad(prompts, bucket_length(max(len(p) for p in prompts)), pad_token_id)
    eos = -1 if eos_token_id is None else eos_token_id
    key, settings = jax.random.key(seed), Sampling(float(temperature), top_k, top_p)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    if recompute:
        tokens = recomputed(
            graphdef,
            params,
            ids,
            mask,
            key,
            steps=max_new_tokens,
            sampling=settings,
            eos=eos,
            pad=pad_token_id,
        )
    else:
        first, cache = prefill(
            graphdef, params, ids, mask, key, steps=max_new_tokens, sampling=settings
        )
        tokens = decode(
            graphdef,
            params,
            first,
            cache,
            key,
            steps=max_new_tokens,
            sampling=settings,
            eos=eos,
            pad=pad_token_id,
        )
    result = []
    for row in np.asarray(tokens).tolist():
        result.append(row[: row.index(eos) + 1] if eos in row else row)
    return result
