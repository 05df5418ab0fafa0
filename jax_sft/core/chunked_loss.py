"""The output layer and the cross entropy as one operation, a chunk of positions at a time.

Why: computed the plain way, the logits [batch, seq, vocab] exist in fp32 all at once,
then again as their softmax in the backward pass, and again as the gradient. At a 32k
vocabulary and sequence 2048 that is 256 MiB per row of the batch for each copy, more
than the rest of a small model's activations together, and on a CPU the copies (the
shifted slice of the logits, the softmax, its gradient) cost more time than the
output matmul.

How: the positions are cut into chunks along the sequence (every row of the batch in
each chunk, so a batch sharded over devices stays sharded). A `lax.scan` over the chunks
computes each chunk's logits, its summed token losses, and at once the gradients that
the loss sends back: with p = softmax(logits), d loss / d logits = p - onehot(target) for
a scored token and 0 otherwise, so d hidden = (p - onehot) @ W^T and d W = hidden^T @
(p - onehot), accumulated over chunks. A custom VJP hands those back when the loss is
differentiated (scaled by the incoming cotangent); a forward without gradients (an
evaluation) computes the loss only. At most one chunk's logits exist at any time, and
no FLOP is repeated: the output matmul runs once forward and twice backward, as in the
plain form.

Labels follow `loss.py`: position t is scored against label t + 1 unless that is
`IGNORE`; the last position of a row predicts nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interop.data.examples import IGNORE
from jax_sft.core.loss import scored_tokens

CHUNK_BYTES = 32 * 2**20  # fp32 logits of one chunk


def chunk_length(batch: int, seq: int, vocab: int) -> int:
    """Positions per chunk: about CHUNK_BYTES of fp32 logits, at least 16, at most seq."""
    return max(16, min(seq, CHUNK_BYTES // (4 * vocab * max(batch, 1))))


def _chunk_loss(h: jax.Array, w: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed NLL, d loss / d logits) of one chunk: h [b, c, e], targets [b, c]."""
    logits = jnp.einsum("bce,ev->bcv", h, w).astype(jnp.float32)
    valid = targets != IGNORE
    safe = jnp.where(valid, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - logz[..., None])
    onehot = jax.nn.one_hot(safe, logits.shape[-1], dtype=jnp.float32)
    dlogits = (probs - onehot) * valid[..., None]
    return jnp.sum((logz - picked) * valid), dlogits


def _chunks(hidden: jax.Array, labels: jax.Array, vocab: int) -> tuple[jax.Array, jax.Array]:
    """hidden [n, b, c, e] and shifted targets [n, b, c], the sequence padded to n * c."""
    b, s, e = hidden.shape
    c = chunk_length(b, s, vocab)
    n = -(-s // c)
    targets = jnp.concatenate([labels[:, 1:], jnp.full((b, n * c - s + 1), IGNORE)], axis=1)
    hidden = jnp.pad(hidden, ((0, 0), (0, n * c - s), (0, 0)))
    split = lambda x: jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)  # noqa: E731
    return split(hidden), split(targets.astype(jnp.int32))


@jax.custom_vjp
def _nll_sum(hidden: jax.Array, head: jax.Array, labels: jax.Array) -> jax.Array:
    h, t = _chunks(hidden, labels, head.shape[1])
    return jnp.sum(jax.lax.map(lambda x: _chunk_loss(x[0], head, x[1])[0], (h, t)))


def _nll_forward(hidden: jax.Array, head: jax.Array, labels: jax.Array):
    h, t = _chunks(hidden, labels, head.shape[1])

    def step(dw, x):
        loss, dlogits = _chunk_loss(x[0], head, x[1])
        dh = jnp.einsum("bcv,ev->bce", dlogits.astype(head.dtype), head)
        dw = dw + jnp.einsum(
            "bce,bcv->ev", x[0], dlogits.astype(x[0].dtype), preferred_element_type=jnp.float32
        )
        return dw, (loss, dh)

    dw, (losses, dh) = jax.lax.scan(step, jnp.zeros(head.shape, jnp.float32), (h, t))
    b, s, e = hidden.shape
    dh = jnp.moveaxis(dh, 0, 1).reshape(b, -1, e)[:, :s]
    return jnp.sum(losses), (dh, dw.astype(head.dtype))


def _nll_backward(residuals, g):
    dh, dw = residuals
    return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), None


_nll_sum.defvjp(_nll_forward, _nll_backward)


def chunked_loss_sum_and_count(
    hidden: jax.Array, head: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of token NLLs in fp32, number of scored tokens) of the logits hidden @ head,
    never holding more than one chunk of them. hidden: the final hidden states [batch,
    seq, embed] in the compute dtype; head: the output kernel [embed, vocab]."""
    return _nll_sum(hidden, head, labels), scored_tokens(labels)
