"""Learned masks (`topk`, DeepSpeed's method): scores that train with the weights.

Each learned unit has scores: one per entry for an unstructured rule (shaped like the
weight, in our layout, so they are placed like it), one per neuron or KV group for rows
and heads. At every step from `start_step` on the unit keeps its k best-scoring items:
the effective weight is W x M with M the 0/1 top-k mask. The top-k has no gradient, so
a straight-through estimator passes the mask's gradient to the scores unchanged:
d loss / d score = sum over the item's entries of (d loss / d W_eff) x W. A pruned
entry's score keeps moving, so it can come back, which is the point of the method; its
weight's gradient is masked (zero), as in DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from interop.pruning.masks import Pruner
from interop.pruning.plan import Unit
from jax_sft.core.trees import leaf_at
from jax_sft.models.hf_names import Transform
from jax_sft.prune.updates import spread, to_ours


def top_mask(scores: jax.Array, keep: int) -> jax.Array:
    """1.0 at the `keep` largest scores, else 0.0 (no gradient)."""
    flat = jax.lax.stop_gradient(scores).reshape(-1)
    _, index = jax.lax.top_k(flat, keep)
    return jnp.zeros(flat.shape, scores.dtype).at[index].set(1.0).reshape(scores.shape)


def straight_through(scores: jax.Array, keep: int) -> jax.Array:
    """The top-k mask forward; the identity backward (the mask's gradient reaches
    the scores)."""
    return top_mask(scores, keep) + (scores - jax.lax.stop_gradient(scores))


class LearnedMasks:
    """The learned units of a run and the masks their scores give, in our layout."""

    def __init__(
        self,
        pruner: Pruner,
        ours: Mapping[str, str],
        layout: Mapping[str, tuple[str, Transform]],
        shapes: Mapping[str, tuple[int, ...]],
    ):
        self.pruner = pruner
        self.units = pruner.learned()
        self.ours, self.layout, self.shapes = ours, layout, shapes
        self.paths = sorted({ours[m.name] for u in self.units for m in u.members})

    def initial(self) -> dict:
        """The scores tree: {"entries": {our path: scores}, "units": {unit key: scores}}."""
        entries, units = {}, {}
        for unit in self.units:
            scores = self.pruner.initial_scores(unit)
            if unit.structured:
                units[unit.key] = scores
            else:
                p = self.ours[unit.ranked[0]]
                entries[p] = self.layout[p][1].to_ours(scores, self.shapes[p])
        return {"entries": entries, "units": units}

    def _keep(self, unit: Unit) -> int:
        return unit.keep_count(unit.group.sparsity)

    def masks(
        self, scores: Mapping, step: jax.Array, *, learn: bool = True
    ) -> dict[str, jax.Array]:
        """{our path: float mask} from the scores (all ones before a rule's start_step);
        with `learn`, differentiable towards the scores (straight-through)."""
        pick = straight_through if learn else top_mask
        out: dict[str, jax.Array] = {}
        for unit in self.units:
            on = step >= self.pruner.cfg.rules[unit.rule].start_step
            if not unit.structured:
                p = self.ours[unit.ranked[0]]
                mask = pick(leaf_at(scores["entries"], p), self._keep(unit))
                out[p] = out.get(p, 1.0) * jnp.where(on, mask, 1.0)
                continue
            items = jnp.where(on, pick(scores["units"][unit.key], self._keep(unit)), 1.0)
            for m in unit.members:
                p = self.ours[m.name]
                name, transform = self.layout[p]
                hf_shape = transform.hf_shape(self.shapes[p])
                full = jnp.broadcast_to(spread(m, items, hf_shape), hf_shape)
                out[p] = out.get(p, 1.0) * to_ours(full, transform, self.shapes[p])
        return out
