"""The hand-written backward passes give autodiff's values and keep less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_fixtures import zero_micro_batch
from xla_settings import REAL_RUN

from interop.tiny_configs import tiny_config
from jax_sft.core.forward import forward_loss
from jax_sft.core.step import compiler_options
from jax_sft.models import layers, registry
from jax_sft.models.lean_backward import rms_norm, silu_gated, silu_gated_matmul


def plain_rms_norm(x, scale, eps):
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * h.astype(x.dtype)


def plain_silu_gated(gate, up):
    return jax.nn.silu(gate) * up


def plain_silu_gated_matmul(gate, up, w):
    return plain_silu_gated(gate, up) @ w


def values_and_grads(fn, *args):
    cotangent = jax.random.normal(jax.random.key(9), fn(*args).shape).astype(args[0].dtype)
    return jax.value_and_grad(
        lambda *a: jnp.sum((fn(*a) * cotangent).astype(jnp.float32)),
        argnums=tuple(range(len(args))),
    )(*args)


def test_silu_gated_equals_autodiff():
    gate, up = (4 * jax.random.normal(k, (3, 5, 64)) for k in jax.random.split(jax.random.key(0)))
    ours = values_and_grads(silu_gated, gate, up)
    plain = values_and_grads(plain_silu_gated, gate, up)
    np.testing.assert_array_equal(silu_gated(gate, up), plain_silu_gated(gate, up))
    # the backward's sigmoid is computed as tanh: rounding differs where the derivative
    # crosses zero (gate near -1.28), gradients here are of order 10
    for got, want in zip(ours[1], plain[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_silu_gated_matmul_equals_autodiff():
    keys = jax.random.split(jax.random.key(2), 3)
    gate, up = (3 * jax.random.normal(k, (2, 9, 40)) for k in keys[:2])
    w = 0.2 * jax.random.normal(keys[2], (40, 24))
    np.testing.assert_array_equal(
        silu_gated_matmul(gate, up, w), plain_silu_gated_matmul(gate, up, w)
    )
    ours = values_and_grads(silu_gated_matmul, gate, up, w)
    plain = values_and_grads(plain_silu_gated_matmul, gate, up, w)
    for got, want in zip(ours[1], plain[1], strict=True):  # sigmoid as tanh, as above
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rms_norm_equals_autodiff(dtype):
    keys = jax.random.split(jax.random.key(1))
    x = (3 * jax.random.normal(keys[0], (2, 7, 48))).astype(dtype)
    scale = (1 + 0.1 * jax.random.normal(keys[1], (48,))).astype(dtype)
    eps = 1e-6
    np.testing.assert_array_equal(
        np.asarray(rms_norm(x, scale, eps), np.float32),
        np.asarray(plain_rms_norm(x, scale, eps), np.float32),
    )
    ours = values_and_grads(lambda x, s: rms_norm(x, s, eps), x, scale)
    plain = values_and_grads(lambda x, s: plain_rms_norm(x, s, eps), x, scale)
    # bf16: ours accumulates the scale's gradient in fp32, autodiff in bf16
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    for got, want in zip(ours[1], plain[1], strict=True):
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol
        )


def gradient_temp_bytes(cfg: dict, batch: int, seq: int, scan: bool) -> int:
    model = registry.build_model(cfg, seed=0, scan_layers=scan)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    mb = zero_micro_batch(batch, seq)
    grad = jax.grad(lambda p: forward_loss(graphdef, p, mb)[0])
    options = {**compiler_options(), **REAL_RUN}  # a real run's fusion (xla_settings.py)
    compiled = jax.jit(grad, compiler_options=options).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


# Looped, the down projection's input is still kept: its recomputation in the backward pass
# is the forward's expression, which XLA merges back. Scanned, the forward and backward
# passes are two loops and the input is recomputed: one MLP array per layer less again.
@pytest.mark.parametrize("scan, arrays", [(False, 2), (True, 3)])
def test_the_llama_gradient_keeps_fewer_mlp_arrays_per_layer(monkeypatch, scan, arrays):
    cfg = tiny_config("llama-10m")
    batch, seq = 4, 256
    lean = gradient_temp_bytes(cfg, batch, seq, scan)
    monkeypatch.setattr(layers, "rms_norm", plain_rms_norm)
    monkeypatch.setattr(
        layers, "silu_gated_matmul", lambda g, u, w: layers.matmul(plain_silu_gated(g, u), w)
    )
    plain = gradient_temp_bytes(cfg, batch, seq, scan)
    mlp_array = batch * seq * cfg["intermediate_size"] * 4
    # autodiff keeps sigmoid(gate) and silu(gate); the plain down projection its input
    assert plain - lean >= arrays * cfg["num_hidden_layers"] * mlp_array, (plain, lean)
