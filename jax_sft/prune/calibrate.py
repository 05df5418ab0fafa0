"""One-shot Wanda and SparseGPT over a whole model, layer after layer, in JAX.

Both methods prune a linear layer from the activations it meets on calibration data
(`interop.pruning.calibrated` holds the per-layer algorithms, in NumPy). A model is
pruned as their authors do it, sequentially: the calibration sequences go through the
embeddings once; then, for each decoder layer, one jitted pass records the inputs of all
its linear layers (`layers.linear_inputs`) and accumulates their statistics (per-input
norms for Wanda, X^T X for SparseGPT) batch by batch, the layer's targeted weights are
pruned (SparseGPT also repairs the ones it keeps), and a second jitted pass through the
pruned layer gives the next layer its inputs. So every layer is calibrated on what the
already pruned layers before it produce. All layers share one shape, so the two jitted
functions compile once.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import numpy as np
from flax import nnx

from interop.errors import UserError
from interop.pruning import calibrated
from jax_sft.models.layers import Linear, linear_inputs
from jax_sft.models.registry import path_str


def windows(
    streams: list[np.ndarray], seq_len: int, samples: int, source: str, length: str
) -> np.ndarray:
    """Up to `samples` calibration sequences [n, seq_len]: the token streams joined end to
    end and cut into whole windows (no padding, as Wanda and SparseGPT sample text);
    `length` names the setting that chose `seq_len`, for the error."""
    joined = np.concatenate(streams) if streams else np.zeros(0, np.int32)
    count = min(samples, len(joined) // seq_len)
    if count == 0:
        raise UserError(
            f"{source}: {len(joined)} tokens, shorter than one calibration sequence of "
            f"{seq_len} ({length})"
        )
    return joined[: count * seq_len].reshape(count, seq_len).astype(np.int32)


@partial(jax.jit, static_argnums=0)
def _start(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array):
    return nnx.merge(graphdef, state).layer_inputs(ids)


@partial(jax.jit, static_argnums=0)
def _record(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, args: tuple):
    layer = nnx.merge(graphdef, state)
    names = {id(m): path_str(p) for p, m in nnx.iter_modules(layer) if isinstance(m, Linear)}
    with linear_inputs() as seen:
        layer(x, *args, None)
    return {names[key]: value for key, value in seen.items() if key in names}


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, args: tuple):
    return nnx.merge(graphdef, state)(x, *args, None)[0]


def prune_model(
    model: nnx.Module,
    ids: np.ndarray,
    targets: set[str],
    method: str,
    *,
    sparsity: float | None,
    n_m: tuple[int, int] | None,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Prune the kernels at `targets` (our paths, e.g. `layers.0.mlp.up_proj.kernel`) of
    `model` in place with `method` on calibration sequences `ids`; returns their masks
    (True = kept) in our [in, out] layout."""
    paths = {id(m): path_str(p) for p, m in nnx.iter_modules(model)}
    linear = {f"{paths[id(m)]}.kernel" for _, m in nnx.iter_modules(model) if isinstance(m, Linear)}
    missing = sorted(targets - linear)
    if missing:  # refused before any calibration work
        raise UserError(
            f"method {method}: {missing[0]} is not a plain linear layer's weight "
            "(e.g. GPT-2's fused c_attn); exclude it"
        )
    graphdef, state = nnx.split(model)
    batches = [
        _start(graphdef, state, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)
    ]
    masks: dict[str, np.ndarray] = {}
    for layer in model.blocks:
        prefix = f"{paths[id(layer)]}."
        kernels = {
            path_str(p): m
            for p, m in nnx.iter_modules(layer)
            if isinstance(m, Linear) and f"{prefix}{path_str(p)}.kernel" in targets
        }
        if kernels:
            stats = _statistics(layer, kernels, batches, method)
            for name, module in kernels.items():
                masks[f"{prefix}{name}.kernel"] = _prune(module, stats[name], method, sparsity, n_m)
        layer_def, layer_state = nnx.split(layer)
        batches = [(_forward(layer_def, layer_state, x, args), args) for x, args in batches]
    return masks


def _statistics(layer, kernels: Mapping, batches: list, method: str) -> dict:
    """Each kernel's accumulated calibration statistic over every batch."""
    layer_def, layer_state = nnx.split(layer)
    kind = calibrated.InputNorms if method == "wanda" else calibrated.Hessian
    stats = {name: kind(m.kernel.shape[0]) for name, m in kernels.items()}
    for x, args in batches:
        seen = _record(layer_def, layer_state, x, args)
        for name in kernels:
            stats[name].add(np.asarray(seen[name], np.float64))
    return stats


def _prune(module: Linear, stat, method: str, sparsity, n_m) -> np.ndarray:
    """Prune one kernel in place; its mask in our [in, out] layout."""
    kernel = np.asarray(module.kernel[...])
    weight = kernel.T  # [out, in], the layout the algorithms use
    if method == "wanda":
        mask = calibrated.wanda_mask(weight, stat.norms(), sparsity=sparsity, n_m=n_m)
        new = np.where(mask, weight, 0)
    else:
        new, mask = calibrated.sparsegpt(weight, stat.value(), sparsity=sparsity, n_m=n_m)
    module.kernel[...] = np.asarray(new.T, kernel.dtype)
    return mask.T
