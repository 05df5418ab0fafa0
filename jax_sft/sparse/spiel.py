"""SpIEL: dynamic sparse fine-tuning with a fixed number of entries per tensor.

Ansell et al. (2024) keep the index set moving: every `sparse.reselect_every` steps,
the entries whose deltas stayed smallest are dropped (they return to the base weight)
and as many new entries are grown where the gradient of the dense weight, accumulated
over the last `sparse.accumulate_steps` steps, is largest. The drop fraction decays
linearly from `sparse.drop_fraction` to 0 over the run, so the set settles. Grown
entries start at value 0 with Adam moments seeded from the accumulated statistics
(first moment = mean gradient, second = its square), as if Adam had been tracking them.

Because every tensor keeps exactly its count of entries, the arrays of the train state
keep their shapes and the train step is compiled once. The swap itself is rare and runs
on the host in numpy; the dense gradient for the accumulation is one more jitted
function (compiled once) that differentiates with respect to a zero dense delta on each
targeted weight, so it costs one fp32 copy of the targeted weights while it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from interop.adapter_config import SparseConfig
from jax_sft.core.forward import forward_loss
from jax_sft.core.loss import scored_tokens
from jax_sft.core.mode import TrainingMode
from jax_sft.core.trees import leaf_at, update_leaves
from jax_sft.sharding.distributed import to_host


def drop_fraction(step: int, total: int, initial: float) -> float:
    """The fraction of each tensor's entries swapped at `step`: linear decay to 0."""
    return initial * max(0.0, 1.0 - step / max(total, 1))


def regrow(
    indices: np.ndarray,
    values: np.ndarray,
    mu: np.ndarray,
    nu: np.ndarray,
    grad_mean: np.ndarray,
    count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drop the `count` smallest |values|, grow the `count` largest |grad_mean| entries
    outside the current set; returns (indices, values, mu, nu), same length, sorted by index."""
    grad_mean = np.asarray(grad_mean, np.float32).reshape(-1)
    count = min(count, grad_mean.size - indices.size, indices.size)
    if count <= 0:
        return indices, values, mu, nu
    keep = np.sort(np.argsort(np.abs(values), kind="stable")[count:])
    score = np.abs(grad_mean)
    score[indices] = -1.0  # grow only entries that were not in the set
    grow = np.argsort(-score, kind="stable")[:count].astype(indices.dtype)
    g = grad_mean[grow]
    new = (
        np.concatenate([indices[keep], grow]),
        np.concatenate([values[keep], np.zeros(count, values.dtype)]),
        np.concatenate([mu[keep], g.astype(mu.dtype)]),
        np.concatenate([nu[keep], np.square(g).astype(nu.dtype)]),
    )
    order = np.argsort(new[0], kind="stable")
    return tuple(a[order] for a in new)


def make_dense_grad(
    graphdef: nnx.GraphDef, mode: TrainingMode, targets: list[str]
) -> Callable[[dict, dict], dict]:
    """jit(fn)(state, batch [accum, micro, seq]) -> {path: dense gradient of the mean
    token loss with respect to each targeted (effective) weight}."""

    def fn(state: dict, batch: dict) -> dict:
        params = mode.params(state)
        zeros = {p: jnp.zeros(leaf_at(params, p).shape, jnp.float32) for p in targets}

        def loss(delta: dict, mb: dict) -> jax.Array:
            moved = update_leaves(
                params, {p: (lambda w, d=d: w + d.astype(w.dtype)) for p, d in delta.items()}
            )
            return forward_loss(graphdef, moved, mb)[0]

        def accumulate(total: dict, mb: dict) -> tuple[dict, None]:
            return jax.tree.map(jnp.add, total, jax.grad(loss)(zeros, mb)), None

        total, _ = jax.lax.scan(accumulate, zeros, batch)
        denom = jnp.maximum(scored_tokens(batch["labels"]), 1).astype(jnp.float32)
        return jax.tree.map(lambda g: g / denom, total)

    return jax.jit(fn)


def adam_state(opt_state) -> optax.ScaleByAdamState:
    """The Adam moments inside the optimizer chain's state."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(s)]
    return found[0]


def _is_adam(x: object) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def replace_adam(opt_state, new: optax.ScaleByAdamState):
    """The optimizer state with its Adam moments replaced."""
    return jax.tree.map(lambda s: new if _is_adam(s) else s, opt_state, is_leaf=_is_adam)


class Spiel:
    """The index-set schedule of one run: accumulate dense gradients in the window before
    each reselection, then swap entries; the sparse mode calls `observe` before each
    step and `update` after it."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        mode: TrainingMode,
        targets: list[str],
        cfg: SparseConfig,
        total: int,
    ):
        self.cfg, self.total = cfg, total
        self._grad = make_dense_grad(graphdef, mode, targets)
        self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)
        self._sum: dict | None = None
        self._seen = 0
        self.swapped: list[int] = []  # entries swapped at each reselection, for the log

    def accumulating(self, step: int) -> bool:
        """Whether 0-based step `step` falls in the window before a reselection."""
        every, window = self.cfg.reselect_every, self.cfg.accumulate_steps
        position = (step + 1) % every
        return position == 0 or position > every - window

    def observe(self, step: int, state: dict, batch: dict) -> None:
        if self.accumulating(step):
            grads = self._grad(state, batch)
            self._sum = grads if self._sum is None else self._add(self._sum, grads)
            self._seen += 1

    def update(self, done: int, state: dict) -> dict:
        """After `done` steps: the state with its index sets moved, when it is time."""
        if done % self.cfg.reselect_every or done >= self.total or self._sum is None:
            return state
        rate = drop_fraction(done, self.total, self.cfg.drop_fraction)
        adam = adam_state(state["opt_state"])
        current = {
            "indices": state["indices"],
            "values": state["trained"]["values"],
            "mu": adam.mu["values"],
            "nu": adam.nu["values"],
        }
        host = jax.tree.map(to_host, {**current, "grad": self._sum})
        moved = {"indices": {}, "values": {}, "mu": {}, "nu": {}}
        swapped = 0
        for path, idx in host["indices"].items():
            count = round(rate * idx.size)
            new = regrow(
                idx,
                host["values"][path],
                host["mu"][path],
                host["nu"][path],
                host["grad"][path] / self._seen,
                count,
            )
            swapped += int(np.sum(~np.isin(new[0], idx)))
            for key, array in zip(moved, new, strict=True):
                moved[key][path] = array
        self._sum, self._seen = None, 0
        self.swapped.append(swapped)
        placed = jax.tree.map(_like, moved, current)
        adam = adam._replace(
            mu={**adam.mu, "values": placed["mu"]}, nu={**adam.nu, "values": placed["nu"]}
        )
        return {
            **state,
            "indices": placed["indices"],
            "trained": {**state["trained"], "values": placed["values"]},
            "opt_state": replace_adam(state["opt_state"], adam),
        }


def _like(host: np.ndarray, old: jax.Array) -> jax.Array:
    """`host` placed exactly as `old` was (so the jitted step sees the same layout)."""
    host = host.astype(old.dtype)
    return jax.make_array_from_callback(host.shape, old.sharding, lambda i: host[i])
