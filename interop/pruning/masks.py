"""Masks from rules: ranking, keep counts, the schedule, in Hugging Face layout.

`Pruner` is the one implementation both backends call at a cut: they hand it the
targeted tensors (HF names and layouts, on the host) and their current masks, and get
the new masks back. Items are ranked best first with ties going to the lower index
(a stable sort), so equal inputs give equal masks on every backend. Masks only ever
lose entries: items already pruned rank last, so a gradual schedule gives supersets of
zeros and a resumed run continues from the masks in its checkpoint.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from interop.prune_config import CALIBRATED, PruneConfig
from interop.pruning.plan import Unit, plan


class Pruner:
    """A run's pruning plan over the model's HF tensors (`shapes`)."""

    def __init__(self, cfg: PruneConfig, hf_config: Mapping, shapes: Mapping[str, tuple]):
        self.cfg = cfg
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.units = plan(cfg, hf_config, self.shapes)
        self.targets = sorted({m.name for u in self.units for m in u.members})
        self.ranked = sorted({n for u in self.units for n in u.ranked})

    def initial_masks(self) -> dict[str, np.ndarray]:
        return {n: np.ones(self.shapes[n], bool) for n in self.targets}

    def cuts_at(self, done: int) -> list[Unit]:
        """The units cut once `done` optimizer steps are done."""
        return [u for u in self.units if done in self.cfg.rules[u.rule].cut_steps()]

    def cut(
        self,
        done: int,
        weights: Mapping[str, np.ndarray],
        masks: Mapping[str, np.ndarray],
        movement: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """New masks for every target after `done` steps (unchanged when nothing cuts);
        `weights` (and `movement` scores) hold at least the ranked tensors."""
        new = {n: np.array(masks[n], bool) for n in self.targets}
        for unit in self.cuts_at(done):
            rule = self.cfg.rules[unit.rule]
            if rule.method == "topk" or rule.method in CALIBRATED:
                continue  # learned scores, or activations: the backend decides these
            alive = self.alive(unit, new)
            scores = self._scores(unit, rule.method, weights, movement, done)
            if unit.n_m is not None:
                chosen = _top_n_of_m(scores, alive, self.shapes[unit.key], *unit.n_m)
            else:
                keep = unit.keep_count(rule.sparsity_at(done, unit.group.sparsity))
                chosen = _top(scores, alive, keep)
            for name, mask in self.expand(unit, chosen).items():
                new[name] &= mask
        return new

    def learned(self) -> list[Unit]:
        """The units whose masks follow learned scores (`topk`)."""
        return [u for u in self.units if self.cfg.rules[u.rule].method == "topk"]

    def initial_scores(self, unit: Unit) -> np.ndarray:
        """A learned unit's starting scores, as DeepSpeed initialized its mask scores
        (kaiming-uniform: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) over a [out, in] tensor, a
        [neurons, 1] column for rows, a [1, heads] row for heads), seeded per unit:
        one value per entry (HF layout) or per structure."""
        rng = np.random.default_rng([self.cfg.seed, zlib.crc32(unit.key.encode())])
        if unit.structured:
            rows = self.cfg.rules[unit.rule].pattern == "rows"
            fan_in = 1 if rows else unit.items * unit.heads_per_item
            shape: tuple[int, ...] = (unit.items,)
        else:
            shape = self.shapes[unit.ranked[0]]
            fan_in = shape[-1]
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    def alive(self, unit: Unit, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Which of the unit's items the masks still keep."""
        if not unit.structured:
            return np.concatenate([np.asarray(masks[n]).reshape(-1) for n in unit.ranked])
        first = next(m for m in unit.members if m.name in unit.ranked)
        return first.item_sums(np.asarray(masks[first.name], np.float64), unit.items) > 0

    def expand(self, unit: Unit, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Tensor masks from the unit's item flags."""
        if unit.structured:
            return {m.name: m.expand(keep, self.shapes[m.name]) for m in unit.members}
        out, start = {}, 0
        for name in unit.ranked:
            size = int(np.prod(self.shapes[name]))
            out[name] = keep[start : start + size].reshape(self.shapes[name])
            start += size
        return out

    def _scores(self, unit, method, weights, movement, done) -> np.ndarray:
        if method == "random":
            rng = np.random.default_rng([self.cfg.seed, zlib.crc32(unit.key.encode()), done])
            return rng.random(unit.items)
        source = movement if method == "movement" else weights
        if method == "movement" and source is None:
            raise ValueError("movement pruning needs the accumulated movement scores")

        def value(name: str) -> np.ndarray:
            x = np.asarray(source[name], np.float64)
            return x if method == "movement" else np.abs(x)

        if not unit.structured:
            return np.concatenate([value(n).reshape(-1) for n in unit.ranked])
        members = [m for m in unit.members if m.name in unit.ranked]
        return sum(m.item_sums(value(m.name), unit.items) for m in members)


def _top(scores: np.ndarray, alive: np.ndarray, keep: int) -> np.ndarray:
    """Flags of the `keep` best alive items (stable: ties go to the lower index)."""
    ranked = np.where(alive, scores, -np.inf)
    order = np.argsort(-ranked, kind="stable")
    chosen = np.zeros(scores.shape, bool)
    chosen[order[: min(keep, int(alive.sum()))]] = True
    return chosen


def _top_n_of_m(
    scores: np.ndarray, alive: np.ndarray, shape: tuple, n: int, m: int, axis: int
) -> np.ndarray:
    """Flags (flat, like `scores`) of the `n` best alive entries in every run of `m`
    consecutive entries along `axis` (stable: ties go to the lower index)."""
    ranked = np.where(alive, scores, -np.inf).reshape(shape)
    ranked = np.moveaxis(ranked, axis, -1)
    groups = ranked.reshape(*ranked.shape[:-1], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    chosen = np.zeros(groups.shape, bool)
    np.put_along_axis(chosen, order[..., :n], True, axis=-1)
    chosen &= groups > -np.inf
    return np.moveaxis(chosen.reshape(ranked.shape), -1, axis).reshape(-1)


def sparsity_report(masks: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per tensor: its size, its zeros and their fraction (what `pruning.json` lists)."""
    out = {}
    for name, mask in sorted(masks.items()):
        mask = np.asarray(mask, bool)
        zeros = int(mask.size - mask.sum())
        out[name] = {"size": int(mask.size), "zeros": zeros, "sparsity": zeros / mask.size}
    return out
