"""Parameter trees by dotted path: reading, replacing and choosing leaves.

The model's parameters are a nested dict (`nnx.to_pure_dict` form) whose leaves have
dotted paths such as `layers.0.mlp.up_proj.kernel` (list positions are int keys).
Settings name parameters by regexes over those paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import jax

from interop.errors import UserError
from interop.optim_groups import decays
from jax_sft.models import stacked
from jax_sft.models.hf_names import NameTable
from jax_sft.models.registry import path_str


def _key(part: str) -> str | int:
    return int(part) if part.isdigit() else part


def dotted(tree: Mapping) -> dict[str, object]:
    """{dotted path: leaf} of a nested tree."""
    return {
        path_str(tuple(k.key for k in path)): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def nested(flat: Mapping[str, object]) -> dict:
    """The nested tree of {dotted path: leaf}, keyed like the parameters (so a tree of
    per-parameter arrays is placed like them, see `sharding.placement.like_params`)."""
    out: dict = {}
    for path, leaf in flat.items():
        keys = [_key(k) for k in path.split(".")]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = leaf
    return out


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


def matching(paths: Iterable[str], patterns: list[str], field: str) -> list[str]:
    """The parameter paths that fully match one of `patterns` (the setting `field`);
    an error lists the parameter names when none does."""
    paths = list(paths)
    chosen = [p for p in paths if any(re.fullmatch(pat, p) for pat in patterns)]
    if not chosen:
        raise UserError(
            f"{field}: {patterns} matches no parameter (parameters: {', '.join(paths)})"
        )
    return chosen


def dense_leaves(
    paths: Iterable[str], patterns: list[str], field: str, frozen: Iterable[str] = ()
) -> list[str]:
    """The leaves a `dense_trainable` setting (`field`) names, trained whole beside a
    mode's own trained tree; `frozen` ones (e.g. LoRA-adapted kernels) are left out."""
    if not patterns:
        return []
    frozen = set(frozen)
    return [p for p in matching(paths, patterns, field) if p not in frozen]


def hf_decay_mask(tree: Mapping, table: NameTable) -> Mapping:
    """A bool tree like the nested parameter `tree`: True where weight decay applies (a
    stacked leaf decays as each of its layers does)."""

    def decay(path: tuple, _) -> bool:
        name = path_str(tuple(k.key for k in path))
        if stacked.is_stacked_path(name):
            name = stacked.per_layer_path(name, 0)
        return decays(table.to_hf_name(name)[0])

    return jax.tree_util.tree_map_with_path(decay, tree)


def dense_decay(dense: Mapping[str, object], table: NameTable) -> dict[str, bool]:
    """The no-decay rule for densely trained leaves given by dotted path."""
    return {p: decays(table.to_hf_name(p)[0]) for p in dense}
