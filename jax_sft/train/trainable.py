"""What a run trains: the whole parameter tree, or a small trained tree over a frozen base.

The train step asks a mode four things: under which state key the trained tree lives
(the only tree the optimizer and its state ever see), how to get the model's parameters
from the state and a trained tree, which trained entries take weight decay, and an
optional penalty on the trained tree. Dense: the trained tree is the parameters. Sparse:
the state keeps the base parameters (never updated) and the index sets; the trained tree
holds the delta values and any leaves trained densely (`sparse.dense_trainable`), and the
parameters are the base with those leaves swapped in and every delta scattered in,
inside the jit. Frozen leaves are simply not in the trained tree, so they carry no
optimizer state at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp

from interop.optim_groups import decays
from jax_sft.models.hf_names import NameTable
from jax_sft.models.registry import path_str
from jax_sft.sparse.deltas import apply_delta


def _key(part: str) -> str | int:
    return int(part) if part.isdigit() else part


def leaf_at(params: Mapping, path: str):
    """The leaf of the nested `params` at a dotted path."""
    for part in path.split("."):
        params = params[_key(part)]
    return params


def update_leaves(params: Mapping, changes: Mapping[str, Callable]) -> dict:
    """A copy of the nested `params` where the leaf at each dotted path is `f(leaf)`."""
    out = dict(params)
    for path, change in changes.items():
        keys = [_key(k) for k in path.split(".")]
        node, parents = out, []
        for k in keys[:-1]:
            parents.append((node, k))
            node = dict(node[k])
        node[keys[-1]] = change(node[keys[-1]])
        for parent, k in reversed(parents):
            parent[k], node = node, parent
        out = node
    return out


def with_dense(params: Mapping, dense: Mapping[str, jax.Array]) -> dict:
    """`params` with the densely trained leaves (by dotted path) in place of the base ones."""
    return update_leaves(params, {p: (lambda _, leaf=leaf: leaf) for p, leaf in dense.items()})


def with_deltas(params: Mapping, indices: Mapping, values: Mapping) -> dict:
    """A copy of the nested `params` whose leaves at the dotted paths carry their deltas."""
    return update_leaves(
        params, {p: (lambda w, p=p: apply_delta(w, indices[p], values[p])) for p in values}
    )


def hf_decay_mask(tree: Mapping, table: NameTable) -> Mapping:
    """A bool tree like the nested parameter `tree`: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decays(table.to_hf_name(path_str(tuple(k.key for k in path)))[0]), tree
    )


def _dense_decay(dense: Mapping[str, jax.Array], table: NameTable) -> dict:
    return {p: decays(table.to_hf_name(p)[0]) for p in dense}


@dataclass(frozen=True)
class DenseTraining:
    key: str = "params"

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        return state["params"] if trained is None else trained

    def penalty(self, trained: Mapping) -> jax.Array | None:
        return None

    def decay_mask(self, trained: Mapping, table: NameTable) -> Mapping:
        return hf_decay_mask(trained, table)


@dataclass(frozen=True)
class SparseTraining:
    """Trained tree: {"values": {path: fp32 vector}, "dense": {path: leaf}}.

    `regularization` l1 / l2 adds `reg_weight` x sum|v| / sum v^2 over the delta values to
    the loss, which keeps the fine-tuned model close to its base.
    """

    key: str = "trained"
    regularization: str = "none"
    reg_weight: float = 0.0

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        trained = state[self.key] if trained is None else trained
        base = with_dense(state["params"], trained["dense"])
        return with_deltas(base, state["indices"], trained["values"])

    def penalty(self, trained: Mapping) -> jax.Array | None:
        if self.regularization == "none" or self.reg_weight == 0:
            return None
        values = jax.tree.leaves(trained["values"])
        if self.regularization == "l1":
            # sign(v) * v is |v| with subgradient 0 at 0 (jnp.abs has +1 there): a delta
            # still at zero is not pushed off it by the penalty.
            total = sum(jnp.sum(jnp.sign(v) * v) for v in values)
        else:
            total = sum(jnp.sum(jnp.square(v)) for v in values)
        return self.reg_weight * total

    def decay_mask(self, trained: Mapping, table: NameTable) -> Mapping:
        """Weight decay acts on every delta value; dense leaves follow the no-decay rule."""
        return {
            "values": {p: True for p in trained["values"]},
            "dense": _dense_decay(trained["dense"], table),
        }


class Mode(Protocol):
    """What the train step needs to know about what trains (see the module docstring)."""

    key: str

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping: ...

    def penalty(self, trained: Mapping) -> jax.Array | None: ...

    def decay_mask(self, trained: Mapping, table: NameTable) -> Mapping: ...


DENSE = DenseTraining()
