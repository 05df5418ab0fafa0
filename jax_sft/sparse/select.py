"""Choosing which entries train: target weights by name, a budget, and a method.

Targets are the parameters whose dotted path matches one of `sparse.target`'s regexes.
The budget is `density` (a fraction of the targeted entries), `num_tunable` (a count), or
`match_lora_rank` (the count a LoRA of that rank would train on the same weights);
`allocation: proportional` gives each tensor its share by size, `global` lets the method
rank entries across tensors. Indices come back sorted, int32, one array per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import jax
import numpy as np

from interop.adapter_config import SparseConfig
from interop.errors import UserError
from jax_sft.core.trees import dense_leaves, matching
from jax_sft.sharding.distributed import to_host


def targets(
    shapes: Mapping[str, tuple[int, ...]], patterns: list[str], dense: Iterable[str] = ()
) -> list[str]:
    """The parameter paths selected by `sparse.target`, less those trained densely."""
    dense = set(dense)
    chosen = [p for p in matching(shapes, patterns, "sparse.target") if p not in dense]
    if not chosen:
        raise UserError("sparse.target: every parameter it matches is in sparse.dense_trainable")
    return chosen


def dense_trainable(paths: Iterable[str], cfg: SparseConfig) -> list[str]:
    """The parameters `sparse.dense_trainable` names: trained whole, beside the deltas."""
    return dense_leaves(paths, cfg.dense_trainable, "sparse.dense_trainable")


def lora_width(shape: tuple[int, ...]) -> int:
    """in + out features of a kernel stored [in, *out] (what one LoRA rank costs); 0 for
    vectors, which LoRA does not adapt."""
    return shape[0] + math.prod(shape[1:]) if len(shape) >= 2 else 0


def budget(shapes: Mapping[str, tuple[int, ...]], chosen: list[str], cfg: SparseConfig) -> int:
    """How many entries train in total."""
    total = sum(math.prod(shapes[p]) for p in chosen)
    if cfg.num_tunable is not None:
        count = cfg.num_tunable
    elif cfg.match_lora_rank is not None:
        count = cfg.match_lora_rank * sum(lora_width(shapes[p]) for p in chosen)
    else:
        count = round((cfg.density if cfg.density is not None else 0.01) * total)
    if not 0 < count <= total:
        raise UserError(f"sparse: a budget of {count} entries does not fit the {total} targeted")
    return count


def proportional(shapes: Mapping[str, tuple[int, ...]], chosen: list[str], count: int) -> dict:
    """Per-tensor counts proportional to size, summing exactly to `count` (largest remainder)."""
    sizes = np.array([math.prod(shapes[p]) for p in chosen], np.float64)
    exact = sizes / sizes.sum() * count
    per = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - per), kind="stable")[: count - per.sum()]:
        per[i] += 1
    return {p: int(min(n, s)) for p, n, s in zip(chosen, per, sizes.astype(np.int64), strict=True)}


def random_indices(size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded uniform subset of k of `size` flat positions, sorted."""
    return np.sort(rng.choice(size, size=k, replace=False)).astype(np.int32)


def _host(weight) -> np.ndarray:
    return to_host(weight) if isinstance(weight, jax.Array) else np.asarray(weight)


def magnitude_indices(weight, k: int) -> np.ndarray:
    """The k largest |W| entries, sorted (ties broken by position, so it is deterministic)."""
    flat = np.abs(_host(weight).astype(np.float32).reshape(-1))
    order = np.argsort(-flat, kind="stable")[:k]
    return np.sort(order).astype(np.int32)


def global_top(scores: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """The `count` highest scores across all tensors, as sorted per-tensor index sets."""
    names = list(scores)
    flat = np.concatenate([np.asarray(scores[p], np.float32).ravel() for p in names])
    top = np.sort(np.argsort(-flat, kind="stable")[:count])
    bounds = np.cumsum([0] + [scores[p].size for p in names])
    return {
        p: (top[(top >= lo) & (top < hi)] - lo).astype(np.int32)
        for p, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True)
    }


def select(
    params: Mapping[str, np.ndarray | jax.Array],
    cfg: SparseConfig,
    seed: int,
    scores: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The index set of every tensor that gets at least one entry (see `_choose`)."""
    return {p: idx for p, idx in _choose(params, cfg, seed, scores).items() if idx.size}


def _choose(
    params: Mapping[str, np.ndarray | jax.Array],
    cfg: SparseConfig,
    seed: int,
    scores: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Index sets for `random`, `magnitude` and `bitfit`, for `fisher` (global top of
    `scores`) and `lt-sft` (top of `scores`, per tensor or global by `allocation`), and
    the random start that `spiel` then moves during training."""
    shapes = {p: tuple(a.shape) for p, a in params.items()}
    if cfg.method == "bitfit":
        return bitfit(shapes)
    chosen = targets(shapes, cfg.target, dense_trainable(shapes, cfg))
    count = budget(shapes, chosen, cfg)
    if cfg.method == "fisher" or (cfg.method == "lt-sft" and cfg.allocation == "global"):
        return global_top({p: scores[p] for p in chosen}, count)
    if cfg.method == "magnitude" and cfg.allocation == "global":
        return global_top({p: np.abs(_host(params[p]).astype(np.float32)) for p in chosen}, count)
    per = proportional(shapes, chosen, count)
    rng = np.random.default_rng(seed)
    if cfg.method in ("random", "spiel"):
        return {p: random_indices(math.prod(shapes[p]), per[p], rng) for p in chosen}
    if cfg.method == "magnitude":
        return {p: magnitude_indices(params[p], per[p]) for p in chosen}
    return {p: magnitude_indices(scores[p], per[p]) for p in chosen}  # lt-sft, per tensor


def bitfit(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """BitFit: every entry of every bias, and nothing else (the budget does not apply)."""
    biases = [p for p in shapes if p.endswith(".bias")]
    if not biases:
        raise UserError("sparse.method: bitfit needs biases, and this model has none")
    return {p: np.arange(math.prod(shapes[p]), dtype=np.int32) for p in biases}
