"""Where every array of the train state lives: ZeRO stages as placements on the mesh.

DeepSpeed's stages say which state is partitioned over the data-parallel ranks:
0 nothing, 1 optimizer state, 2 optimizer state and gradients, 3 parameters too. Here
the data-parallel ranks are the `data` x `fsdp` axes, and "partitioned" means one
dimension of the array is sharded over them; XLA then turns the gradient all-reduce into
a reduce-scatter and gathers parameters where they are used. Independently, the `tensor`
axis splits the dimensions whose logical names are heads, kv_heads, mlp or vocab.
A dimension is sharded only when the axis size divides it; otherwise it stays whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_sft.sharding.mesh import DATA_AXES


@dataclass(frozen=True)
class Placement:
    """Shardings of a run's arrays: the state tree, the gradient tree, a global train
    batch [accumulation, micro, seq], a batch of rows [rows, seq] (eval, micro-batch),
    replicated values."""

    state: dict
    grads: dict
    batch: object
    rows: object
    replicated: object


TENSOR_RULES = {"heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "vocab": "tensor"}


def spec_for(shape: tuple[int, ...], axes: tuple, mesh: Mesh, data_axes: tuple[str, ...]) -> P:
    """A PartitionSpec: tensor-parallel by logical name, then one dim over `data_axes`."""
    spec: list = [None] * len(shape)
    for i, name in enumerate(axes):
        axis = TENSOR_RULES.get(name)
        if axis and mesh.shape[axis] > 1 and shape[i] % mesh.shape[axis] == 0:
            spec[i] = axis
    data_axes = tuple(a for a in data_axes if mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in data_axes)
    if size > 1:
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % size == 0]
        if free:
            embed = [i for i in free if axes[i] == "embed"]
            dim = embed[0] if embed else max(free, key=lambda i: shape[i])
            spec[dim] = data_axes if len(data_axes) > 1 else data_axes[0]
    return P(*spec)


def zero_axes(zero_stage: int) -> dict[str, tuple[str, ...]]:
    """Which data-parallel axes shard params, grads and optimizer state at a ZeRO stage."""
    return {
        "params": DATA_AXES if zero_stage >= 3 else ("fsdp",),
        "grads": DATA_AXES if zero_stage >= 2 else ("fsdp",),
        "opt": DATA_AXES if zero_stage >= 1 else ("fsdp",),
    }


def param_specs(params: Mapping, axes: Mapping, mesh: Mesh, data_axes: tuple[str, ...]) -> Mapping:
    """PartitionSpecs for a parameter tree, given the tree of logical axis names."""
    return jax.tree.map(
        lambda a, p: spec_for(tuple(p.shape), a, mesh, data_axes),
        axes,
        params,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def like_params(tree, params_specs: Mapping, params: Mapping, mesh: Mesh | None = None):
    """Specs for a tree (e.g. optimizer state) whose sub-trees mirror the parameters:
    a leaf whose path ends with a parameter's path and has its shape gets its spec; one
    that is the parameter's bit-packed mask (uint8, the last axis packed eight to a
    byte; `mesh` given) gets it too, the last axis kept sharded where it divides."""
    by_path = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(params_specs, is_leaf=_is_spec)[0]:
        by_path[tuple(path)] = spec
    shapes = {tuple(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

    def pick(path, leaf):
        for n in range(len(path)):
            suffix = tuple(path[n:])
            if suffix not in by_path:
                continue
            if shapes[suffix] == tuple(leaf.shape):
                return by_path[suffix]
            if mesh is not None and _packs(shapes[suffix], leaf):
                return _packed_spec(by_path[suffix], leaf.shape, mesh)
        return P()

    return jax.tree_util.tree_map_with_path(pick, tree)


def _packs(shape: tuple[int, ...], leaf) -> bool:
    """Whether `leaf` is a bit-packed mask of an array of `shape`."""
    packed = (*shape[:-1], -(-shape[-1] // 8)) if shape else None
    return np.dtype(leaf.dtype) == np.uint8 and tuple(leaf.shape) == packed


def _packed_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    entries = list(spec) + [None] * (len(shape) - len(spec))
    last = entries[-1]
    if last is not None:
        names = (last,) if isinstance(last, str) else tuple(last)
        if shape[-1] % math.prod(mesh.shape[a] for a in names):
            entries[-1] = None
    return P(*entries)


def _is_spec(x: object) -> bool:
    return isinstance(x, P)


def named(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def param_shardings(mesh: Mesh, zero_stage: int, params: Mapping, axes: Mapping) -> Mapping:
    """Where each parameter lives at a ZeRO stage; `params` may be abstract (shapes only),
    so loading can place each tensor straight where it belongs."""
    return named(mesh, param_specs(params, axes, mesh, zero_axes(zero_stage)["params"]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A global train batch [accumulation, rows, seq]: rows over the data-parallel axes."""
    return NamedSharding(mesh, P(None, DATA_AXES, None))


def local_batch_rows(mesh: Mesh, accumulation: int, rows: int) -> list[int] | None:
    """The rows of a host global batch [accumulation x rows, seq] that this process's
    devices hold under `batch_sharding` (None: all of them, as with one process)."""
    shape = (accumulation, rows, 1)
    held: set[int] = set()
    for index in batch_sharding(mesh).addressable_devices_indices_map(shape).values():
        slots, part = range(accumulation)[index[0]], range(rows)[index[1]]
        held.update(k * rows + j for k in slots for j in part)
    return None if len(held) == accumulation * rows else sorted(held)


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """A batch [rows, seq] (a micro-batch, an eval batch): rows over the data-parallel axes."""
    return NamedSharding(mesh, P(DATA_AXES, None))


def place_batch(host: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """A host batch laid out by `sharding`; each process builds only its devices' rows."""
    return {
        k: jax.make_array_from_callback(np.shape(v), sharding, lambda i, v=v: np.asarray(v[i]))
        for k, v in host.items()
    }


def place(host, shardings):
    """Host arrays (a tree) laid out by `shardings` (a tree alike): each device gets
    only its own slice, and each process builds only its own devices' slices."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(
            np.shape(x), s, lambda index, x=x: np.asarray(x[index])
        ),
        host,
        shardings,
    )


def build_placement(
    mesh: Mesh,
    zero_stage: int,
    params: Mapping,
    axes: Mapping,
    opt_state,
    *,
    trained: Mapping | None = None,
    replicated: tuple[str, ...] = (),
    extra: Mapping | None = None,
) -> Placement:
    """The Placement of a run's train state, gradients and batches on `mesh`.

    `trained` is the tree the optimizer updates (default: the parameters). When it is
    small (sparse values, LoRA factors, a few dense leaves), its state key is among
    `replicated`: it, its gradients and its optimizer state are replicated, and the
    frozen base is placed like dense parameters. Otherwise every tree is placed like the
    parameters where it mirrors them (a leaf with a parameter's path and shape: the
    parameters themselves, Adam's moments, pruning masks and scores), replicated
    elsewhere.
    """
    zero = zero_axes(zero_stage)
    whole = NamedSharding(mesh, P())
    trained = params if trained is None else trained
    if replicated:
        opt = jax.tree.map(lambda _: whole, opt_state)
        grads = jax.tree.map(lambda _: whole, trained)
    else:
        opt_specs = like_params(opt_state, param_specs(params, axes, mesh, zero["opt"]), params)
        opt = named(mesh, opt_specs)
        grad_specs = param_specs(params, axes, mesh, zero["grads"])
        grads = named(mesh, like_params(trained, grad_specs, params))
    specs = param_specs(params, axes, mesh, zero["params"])
    state = {
        "params": named(mesh, specs),
        **{
            k: jax.tree.map(lambda _: whole, v)
            if k in replicated
            else named(mesh, like_params(v, specs, params, mesh))
            for k, v in (extra or {}).items()
        },
        "opt_state": opt,
        "step": whole,
        "rng": whole,
    }
    return Placement(
        state=state,
        grads=grads,
        batch=batch_sharding(mesh),
        rows=rows_sharding(mesh),
        replicated=whole,
    )
