"""LoRA factors and the weights they give: W + (alpha / rank) * B @ A, W frozen.

peft keeps A [rank, in] and B [out, rank] and adds scale * x A^T B^T to a linear layer's
output. Our kernels compute x @ W with W [in, *out], so we hold the factors transposed,
`a` = A^T [in, rank] and `b` = B^T [rank, out], and the effective kernel is
W + scale * (a @ b), reshaped like W (GPT-2's fused q/k/v kernel is [in, 3, embed]).
Initialisation is peft's default: A kaiming-uniform with a = sqrt(5), i.e. uniform in
+-1/sqrt(in), and B zero, so training starts exactly at the base model.

The factors are merged into the kernels inside the jit instead of adding x @ a @ b beside
each matmul: the model code stays untouched, and a and b get the same gradients. The
price is one [in, out] product per adapted layer and step, small beside the forward
pass, and no dropout on the LoRA path (the run config refuses it).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from interop.adapter_config import LoraConfig
from jax_sft.core.trees import update_leaves
from jax_sft.lora.targets import Target

LoraTree = dict[str, dict[str, np.ndarray]]  # our kernel path -> {"a": [in, r], "b": [r, out]}


def scale(cfg: LoraConfig) -> float:
    """peft's scaling, lora_alpha / r."""
    return cfg.alpha / cfg.rank


def init_lora(targets: Mapping[str, Target], rank: int, seed: int) -> LoraTree:
    """Fresh fp32 factors for every target (host arrays). Each layer's key is the seed
    folded with a hash of its path, so a layer starts the same whichever others are adapted."""
    key = jax.random.key(seed)
    lora = {}
    for path, target in targets.items():
        bound = 1.0 / math.sqrt(target.in_features)
        layer_key = jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)
        a = jax.random.uniform(layer_key, (target.in_features, rank), jnp.float32, -bound, bound)
        b = np.zeros((rank, target.out_features), np.float32)
        lora[path] = {"a": np.asarray(a), "b": b}
    return lora


def lora_delta(a: jax.Array, b: jax.Array, scale: float, shape: tuple[int, ...]) -> jax.Array:
    """scale * a @ b in float32, shaped like the kernel it adds to."""
    product = jnp.matmul(
        a.astype(jnp.float32), b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    return (scale * product).reshape(shape)


def _adapted(weight: jax.Array, factors: Mapping[str, jax.Array], scale: float) -> jax.Array:
    delta = lora_delta(factors["a"], factors["b"], scale, weight.shape)
    return (weight.astype(jnp.float32) + delta).astype(weight.dtype)


def apply_lora(params: Mapping, lora: Mapping[str, Mapping], scale: float) -> dict:
    """A copy of the nested `params` (`nnx.to_pure_dict` form) whose kernels at the dotted
    paths of `lora` carry their adapters: added in float32, rounded once to W's dtype.
    With b = 0 every leaf is bit-identical to the base. Traceable under `jax.jit`."""
    return update_leaves(
        params, {p: (lambda w, f=f: _adapted(w, f, scale)) for p, f in lora.items()}
    )
