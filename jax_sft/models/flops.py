"""Training FLOPs per token: the one formula behind every throughput and MFU figure.

As MaxText's `performance_metrics.md` counts them: each parameter used in a matmul costs
6 FLOPs per token in training (2 forward, 4 backward), and causal attention adds
6 x layers x heads x head_dim x seq_len per token (QK^T and AV, forward and backward,
half of the score matrix being masked). Norms, biases and softmax are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import nnx

from jax_sft.models import registry


def matmul_params(hf_config: Mapping) -> int:
    """Parameters that take part in matmuls: every kernel, and the token embedding when it
    is also the output head (a lookup alone is not a matmul)."""
    model = nnx.eval_shape(lambda: registry.build_model(hf_config))
    sizes = {p: int(v.get_value().size) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tied = not any(p[0] == "lm_head" for p in sizes)
    kernels = sum(n for p, n in sizes.items() if p[-1] == "kernel")
    heads = sum(n for p, n in sizes.items() if p[0] in ("embed_tokens", "wte")) if tied else 0
    return kernels + heads


def attention_dims(hf_config: Mapping) -> tuple[int, int, int]:
    """(layers, heads, head_dim)."""
    layers = hf_config.get("num_hidden_layers") or hf_config["n_layer"]
    heads = hf_config.get("num_attention_heads") or hf_config["n_head"]
    width = hf_config.get("hidden_size") or hf_config["n_embd"]
    return layers, heads, hf_config.get("head_dim") or width // heads


def train_flops_per_token(hf_config: Mapping, seq_len: int) -> float:
    layers, heads, head_dim = attention_dims(hf_config)
    return 6.0 * matmul_params(hf_config) + 6.0 * layers * heads * head_dim * seq_len
