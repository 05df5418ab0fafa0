"""What pruning does to arrays inside a jitted function: masks, proximal steps, movement.

Masks are bool arrays in our layout, one per targeted parameter. A pruned entry is held
at zero three ways, each needed: the forward uses `where(mask, w, 0)`, so its gradient
is zero and Adam's moments for it stay zero; after every update the mask is applied
again, so weight decay (which acts on the stored value) cannot revive it; at a cut the
newly pruned entries and their moments are zeroed at once (`zero_pruned`).

The proximal steps implement the regularization without a loss term: `l1` shrinks each
entry towards zero by lr x weight and stops at zero (soft-thresholding); `group_lasso`
shrinks each structure's L2 norm the same way, so whole rows or heads reach zero
together. Structures are laid out in the Hugging Face tensors (`interop.pruning`), so
the group steps move each tensor into that layout and back, inside the jit.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from interop.pruning.plan import Unit
from interop.pruning.structure import Member
from jax_sft.models.hf_names import Transform


def masked(w: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def zero_pruned(tree, masks: Mapping[tuple, jax.Array]):
    """`tree` (parameters, or optimizer state holding moments like them) with every leaf
    whose key path ends with a masked parameter's path, and has its shape, masked."""

    def pick(path, leaf):
        keys = tuple(k.key for k in path if hasattr(k, "key"))
        for n in range(len(keys)):
            mask = masks.get(keys[n:])
            if mask is not None and mask.shape == leaf.shape:
                return masked(leaf, mask)
        return leaf

    return jax.tree_util.tree_map_with_path(pick, tree)


def soft_threshold(w: jax.Array, t: jax.Array) -> jax.Array:
    """The proximal step of t x |w|: shrink towards zero by t, stopping at zero."""
    return jnp.sign(w) * jnp.maximum(jnp.abs(w) - t.astype(w.dtype), 0)


def to_hf(x: jax.Array, transform: Transform) -> jax.Array:
    if transform.kind == "transpose":
        return x.T
    if transform.kind == "merge":
        return x.reshape(transform.hf_shape(x.shape))
    return x


def to_ours(x: jax.Array, transform: Transform, shape: tuple[int, ...]) -> jax.Array:
    return x.T if transform.kind == "transpose" else x.reshape(shape)


def _item_sums(m: Member, x: jax.Array, items: int) -> jax.Array:
    moved = jnp.moveaxis(x, m.axis, 0)
    return moved.reshape(m.segments, items, m.block, -1).sum(axis=(0, 2, 3))


def spread(m: Member, per_item: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    line = jnp.tile(jnp.repeat(per_item, m.block), m.segments)
    view = [1] * len(shape)
    view[m.axis] = line.size
    return line.reshape(view)


def group_shrink(unit: Unit, tensors: dict[str, jax.Array], t: jax.Array) -> None:
    """The proximal step of t x (sum of the unit's structure norms), on HF-layout
    `tensors` (updated in place of the dict)."""
    squares = sum(
        _item_sums(m, jnp.square(tensors[m.name].astype(jnp.float32)), unit.items)
        for m in unit.members
    )
    norm = jnp.sqrt(squares)
    scale = jnp.where(norm > t, 1.0 - t / jnp.maximum(norm, 1e-30), 0.0)
    for m in unit.members:
        x = tensors[m.name]
        tensors[m.name] = x * spread(m, scale, x.shape).astype(x.dtype)
