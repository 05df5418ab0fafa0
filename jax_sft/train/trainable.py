"""What a run trains: the whole parameter tree, or sparse delta values over a frozen base.

The train step asks a mode two things: under which state key the trained tree lives
(the tree the optimizer and its state see), and how to get the model's parameters from
the state and a trained tree. Dense: the trained tree is the parameters. Sparse: the
state keeps the base parameters (never updated), the index sets and the values; the
parameters are the base with every delta scattered in, inside the jit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jax_sft.sparse.deltas import apply_delta


def _key(part: str) -> str | int:
    return int(part) if part.isdigit() else part


def with_deltas(params: Mapping, indices: Mapping, values: Mapping) -> dict:
    """A copy of the nested `params` whose leaves at the dotted paths carry their deltas."""
    out = dict(params)
    for path, v in values.items():
        keys = [_key(k) for k in path.split(".")]
        node, parents = out, []
        for k in keys[:-1]:
            parents.append((node, k))
            node = dict(node[k])
        node[keys[-1]] = apply_delta(node[keys[-1]], indices[path], v)
        for parent, k in reversed(parents):
            parent[k], node = node, parent
        out = node
    return out


@dataclass(frozen=True)
class DenseTraining:
    key: str = "params"

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        return state["params"] if trained is None else trained


@dataclass(frozen=True)
class SparseTraining:
    key: str = "values"

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        values = state["values"] if trained is None else trained
        return with_deltas(state["params"], state["indices"], values)


DENSE = DenseTraining()
