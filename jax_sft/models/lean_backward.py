"""Hand-written backward passes that keep less for the backward pass than autodiff does.

A training step's peak memory is the activations the forward pass leaves for the
backward pass. Autodiff keeps every intermediate its derivative rules name, and XLA adds
its own: when the backward pass recomputes a value the forward pass also computed, XLA's
common-subexpression elimination merges the two and keeps the forward's copy alive until
the backward pass needs it (on the CPU XLA drops optimization barriers before that pass,
so `jax.checkpoint`'s defence does not hold there). Hence two rules here:

- a custom VJP saves only the inputs it cannot cheaply recompute;
- what the backward pass recomputes, it computes in a form that differs from the
  forward's (the logistic function as tanh, below), so it is not merged back.

Measured on the 52M Llama at batch 8 x 512 (XLA `memory_analysis()` of the train step):
`silu_gated` keeps gate and up (autodiff of `silu(gate) * up` kept sigmoid(gate) and
silu(gate) besides): 305 MB less; `rms_norm` keeps the input and the per-token 1/rms:
160 MB less (recomputing the 1/rms instead saved a scanned stack one array per layer but
made the looped 52M gradient 2-5% slower here). The forward values are the plain
formulas', bit for bit.

`silu_gated_matmul`, the down projection with its input silu(gate) * up recomputed in the
backward pass, breaks the second rule on purpose. Recomputed in a form XLA cannot merge,
the products of all layers were scheduled early and the looped 52M step needed 432 MB
more; recomputed as the forward's expression, XLA merges it back when the layers are
looped (the step is as before) and cannot when they are scanned, where the forward and
backward passes are two loops: the scanned 52M step needs ~350 MB less (1.95 GB).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@jax.custom_vjp
def silu_gated(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, the middle of a SwiGLU MLP, keeping only gate and up."""
    return jax.nn.silu(gate) * up


def _silu_gated_forward(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple]:
    return jax.nn.silu(gate) * up, (gate, up)


def _silu_gated_backward(residuals: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    gate, up = residuals
    sigmoid = 0.5 + 0.5 * jnp.tanh(0.5 * gate)
    silu = gate * sigmoid
    return dy * up * (sigmoid + silu * (1 - sigmoid)), dy * silu


silu_gated.defvjp(_silu_gated_forward, _silu_gated_backward)


def weight_gradient(x: jax.Array, dy: jax.Array) -> jax.Array:
    """x^T @ dy over all leading axes, [in, out], laid out for XLA's CPU matmul kernels
    (`layers.matmul` says why the two reach the product behind an optimization barrier)."""
    rows_x, rows_dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    if jax.default_backend() == "cpu":
        rows_x, rows_dy = jax.lax.optimization_barrier((rows_x, rows_dy))
    return jax.lax.dot_general(rows_x, rows_dy, (((0,), (0,)), ((), ())))


@jax.custom_vjp
def silu_gated_matmul(gate: jax.Array, up: jax.Array, w: jax.Array) -> jax.Array:
    """(silu(gate) * up) @ w, a SwiGLU MLP's down projection, keeping gate and up (which
    `silu_gated` keeps anyway) instead of the product, the projection's input: the
    backward pass recomputes it, elementwise."""
    return _silu_gated_matmul_forward(gate, up, w)[0]


def _silu_gated_matmul_forward(gate: jax.Array, up: jax.Array, w: jax.Array) -> tuple:
    return (jax.nn.silu(gate) * up) @ w, (gate, up, w)


def _silu_gated_matmul_backward(residuals: tuple, dy: jax.Array) -> tuple:
    gate, up, w = residuals
    dgate, dup = _silu_gated_backward((gate, up), dy @ w.T)
    return dgate, dup, weight_gradient(jax.nn.silu(gate) * up, dy)


silu_gated_matmul.defvjp(_silu_gated_matmul_forward, _silu_gated_matmul_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """scale * x / rms(x): normalized in fp32, cast back to x's dtype, then scaled (the
    order of casts Hugging Face's Llama uses)."""
    return _rms_norm_forward(x, scale, eps)[0]


def _rms_norm_forward(x: jax.Array, scale: jax.Array, eps: float) -> tuple[jax.Array, tuple]:
    h = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * (h * r).astype(x.dtype), (x, scale, r)


def _rms_norm_backward(eps: float, residuals: tuple, dy: jax.Array) -> tuple:
    x, scale, r = residuals
    h = x.astype(jnp.float32) * r
    dy = dy.astype(jnp.float32)
    features = h.shape[-1]
    dscale = jnp.sum((dy * h.astype(x.dtype).astype(jnp.float32)).reshape(-1, features), 0)
    dh = dy * scale.astype(x.dtype).astype(jnp.float32)
    dx = r * (dh - h * jnp.mean(dh * h, axis=-1, keepdims=True))
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_forward, _rms_norm_backward)
