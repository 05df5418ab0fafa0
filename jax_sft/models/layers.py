"""Building blocks shared by the model families: linear maps, embeddings and norms.

Every parameter is an `nnx.Param` that carries `axes`, a tuple of logical axis names
(`vocab`, `embed`, `heads`, `kv_heads`, `mlp`, or None), one per dimension. The sharding
layer maps these names onto mesh axes; nothing here depends on a mesh. Kernels are stored
as [in, out] so that `x @ kernel` is the forward; Hugging Face's [out, in] layout is a
transpose recorded in each family's name table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jax_sft.models.lean_backward import rms_norm, silu_gated, silu_gated_matmul, weight_gradient

Axes = tuple[str | None, ...]


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w for x [..., in] and w [in, out], with a backward pass laid out for XLA's CPU
    matmul kernels.

    Autodiff's weight gradient, x^T @ dy contracted over all leading axes, leads XLA's CPU
    layout assignment to transpose dy (the larger operand) inside the elementwise fusion
    that produces it: a strided single-threaded loop that took several times as long as
    the matmul itself, ~20% of a training step. Here x and dy reach the weight-gradient product
    through an optimization barrier, as they are, and the product contracts their
    leading axes in place (the CPU matmul takes a transposed operand without a copy).
    Other backends get the same products without the barrier.
    """
    return x @ w


def _matmul_forward(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple]:
    return x @ w, (x, w)


def _matmul_backward(residuals: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    return dy @ w.T, weight_gradient(x, dy)


matmul.defvjp(_matmul_forward, _matmul_backward)


def normal_init(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: jnp.dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias), computed in `dtype`, parameters stored in `param_dtype`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None],
        use_bias: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        init_std: float = 0.02,
    ):
        self.dtype = dtype
        self.kernel = nnx.Param(
            normal_init(rngs, (in_features, out_features), init_std, param_dtype), axes=axes
        )
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), param_dtype), axes=(axes[1],))
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if _CAPTURED is not None:
            _CAPTURED[id(self)] = x
        y = matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return self._biased(y)

    def silu_gated(self, gate: jax.Array, up: jax.Array) -> jax.Array:
        """self(silu(gate) * up), keeping gate and up for the backward pass rather than
        the product (`lean_backward.silu_gated_matmul`); pruning calibration, which
        records this layer's input, sees the product."""
        if _CAPTURED is not None:
            return self(silu_gated(gate, up))
        kernel = self.kernel[...].astype(self.dtype)
        return self._biased(
            silu_gated_matmul(gate.astype(self.dtype), up.astype(self.dtype), kernel)
        )

    def _biased(self, y: jax.Array) -> jax.Array:
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


_CAPTURED: dict[int, jax.Array] | None = None


@contextmanager
def linear_inputs() -> Iterator[dict[int, jax.Array]]:
    """Inside, every `Linear` called records its input under id(module): how pruning
    calibration (Wanda, SparseGPT) sees the activations each layer's weights meet.
    Recording happens while tracing, so under `jax.jit` the inputs come out as values
    of the traced function; outside the block nothing is recorded."""
    global _CAPTURED
    _CAPTURED = {}
    try:
        yield _CAPTURED
    finally:
        _CAPTURED = None


class Embed(nnx.Module):
    """A lookup table [num_embeddings, features]; `attend` is its transpose (tied heads)."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axes: tuple[str | None, str | None],
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        init_std: float = 0.02,
    ):
        self.dtype = dtype
        self.embedding = nnx.Param(
            normal_init(rngs, (num_embeddings, features), init_std, param_dtype), axes=axes
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ self.embedding[...].astype(self.dtype).T


def output_kernel(embed: Embed, lm_head: Linear | None) -> jax.Array:
    """The output layer as one [embed, vocab] kernel in the compute dtype: `lm_head`'s,
    or the transposed token embedding when the head is tied (what the chunked loss
    multiplies the final hidden states by)."""
    if lm_head is None:
        return embed.embedding[...].astype(embed.dtype).T
    return lm_head.kernel[...].astype(lm_head.dtype)


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: normalize in fp32, cast back, then scale (the HF order of casts)."""

    def __init__(self, features: int, *, eps: float, param_dtype: jnp.dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


class LayerNorm(nnx.Module):
    """Standard LayerNorm in fp32; `affine=False` has neither scale nor bias (OPT option)."""

    def __init__(self, features: int, *, eps: float, affine: bool, param_dtype: jnp.dtype):
        self.eps = eps
        self.scale = (
            nnx.Param(jnp.ones((features,), param_dtype), axes=("embed",)) if affine else None
        )
        self.bias = (
            nnx.Param(jnp.zeros((features,), param_dtype), axes=("embed",)) if affine else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            h = h * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return h.astype(x.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def call_layer(layer: nnx.Module, remat: bool, *args: Any) -> Any:
    """`layer(*args)`, rematerialised in the backward pass when `remat` (activation
    checkpointing): only the layer's inputs are kept, its insides are recomputed. Arguments
    and results are pytrees (arrays, a layer's KV cache or None); the first result is the
    block's output, recorded inside `block_outputs()`."""
    if remat:
        graphdef, state = nnx.split(layer)
        out = jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)
    else:
        out = layer(*args)
    if _BLOCKS is not None:
        _BLOCKS.append(out[0])
    return out


_BLOCKS: list[jax.Array] | None = None


@contextmanager
def block_outputs() -> Iterator[list[jax.Array]]:
    """Inside, every transformer block called through `call_layer` appends its output
    (the residual stream after the block, before any final norm), in order: the hidden
    states per-layer distillation compares. Like `linear_inputs`, it records at trace time."""
    global _BLOCKS
    _BLOCKS = []
    try:
        yield _BLOCKS
    finally:
        _BLOCKS = None
