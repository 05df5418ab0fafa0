"""Decoder layers stored stacked and run as one scan over depth (`model.scan_layers`).

A model's decoder layers are normally a list: each layer's parameters are leaves of
their own (`layers.3.mlp.up_proj.kernel`), the forward is a Python loop, and XLA compiles
each layer's forward, backward and optimizer update once per layer, so compile time
grows with depth. Stacked, the layers are one module whose every parameter carries a
leading layer axis (`layers.mlp.up_proj.kernel`: [layers, embed, mlp], logical axis
`layers`); the forward is one `lax.scan` over that axis and the optimizer updates a
Llama's 9 layer leaves instead of 9 per layer, so XLA compiles one layer whatever the
depth. The arithmetic is the same; the loss agrees to rounding.

The stacked form lives only inside a run: its parameters, optimizer state and training
checkpoints. Everything that names a parameter outside it (model checkpoints, the HF
name tables, converters, exports) speaks the per-layer form, and the conversion happens
at the boundary: `registry.flat_state` unstacks, loading reads the per-layer tensors of
a stacked leaf (`per_layer_paths`) and places them as one array.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jax_sft.models.layers import call_layer

PREFIX = "layers"  # the model attribute that holds the decoder layers
AXIS = "layers"  # the logical name of a stacked parameter's leading axis


def decoder_layers(layers: list[nnx.Module], stacked: bool) -> nnx.Module:
    """The layers as the model holds them: a list, or (stacked) the first layer with
    every parameter replaced by the stack of all layers' values."""
    if not stacked:
        return nnx.List(layers)
    states = [nnx.state(layer, nnx.Param) for layer in layers]
    first = layers[0]
    for path, var in nnx.to_flat_state(nnx.state(first, nnx.Param)):
        values = [_at(state, path).get_value() for state in states]
        var.set_value(jnp.stack(values))
        var.set_metadata(axes=(AXIS, *var.get_metadata()["axes"]))
    return first


def _at(state: nnx.State, path: tuple) -> nnx.Variable:
    for key in path:
        state = state[key]
    return state


def run_layers(
    layers: nnx.Module, stacked: bool, remat: bool, x: jax.Array, args: tuple, kvs: list
) -> tuple[jax.Array, list]:
    """Every layer in turn, `layer(x, *args, kv) -> (x, kv)` with its own `kvs` entry;
    (the last output, the layers' new KV entries). Stacked, one scan runs them."""
    if not stacked:
        out = []
        for layer, kv in zip(layers, kvs, strict=True):
            x, kv = call_layer(layer, remat, x, *args, kv)
            out.append(kv)
        return x, out
    graphdef, params, rest = nnx.split(layers, nnx.Param, ...)

    def body(h: jax.Array, xs: tuple) -> tuple[jax.Array, Any]:
        p, kv = xs
        return nnx.merge(graphdef, p, rest)(h, *args, kv)

    if remat:
        body = jax.checkpoint(body)
    cached = kvs[0] is not None
    stacked_kv = jax.tree.map(lambda *a: jnp.stack(a), *kvs) if cached else None
    x, new = jax.lax.scan(body, x, (params, stacked_kv))
    if not cached:
        return x, [None] * len(kvs)
    return x, [jax.tree.map(lambda a, i=i: a[i], new) for i in range(len(kvs))]


def is_stacked_path(path: str) -> bool:
    """Whether a dotted parameter path names a stacked leaf (`layers.mlp...`, not
    `layers.3.mlp...`)."""
    head, _, rest = path.partition(".")
    return head == PREFIX and bool(rest) and not rest.split(".")[0].isdigit()


def per_layer_path(path: str, layer: int) -> str:
    """The per-layer path of layer `layer`'s slice of the stacked leaf at `path`."""
    return f"{PREFIX}.{layer}.{path.partition('.')[2]}"


def unstack_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted path: array} with the stacked leaves split into per-layer leaves, in a
    per-layer model's order (layer by layer, where the stacked leaves were)."""
    paths = list(flat)
    stacked = [p for p in paths if is_stacked_path(p)]
    if not stacked:
        return dict(flat)
    first = paths.index(stacked[0])
    plain = [p for p in paths if not is_stacked_path(p)]
    layered = [
        (per_layer_path(p, i), flat[p][i])
        for i in range(flat[stacked[0]].shape[0])
        for p in stacked
    ]
    return dict(
        [(p, flat[p]) for p in plain[:first]] + layered + [(p, flat[p]) for p in plain[first:]]
    )
