"""DeepSpeed's micro-batch semantics, for the `engine(batch)` / `backward` / `step` API.

DeepSpeed's module returns the mean token loss of its rank's micro-batch; `backward`
divides it by the accumulation steps, and the data-parallel all-reduce averages the
ranks' gradients, so an optimizer step follows the mean of per-micro-batch means. A
micro-batch here is the global one, [micro x data-parallel ranks, seq], rows split over
the data-parallel axes; its loss is the mean over ranks of each rank's mean token loss,
and its gradient is that loss's, divided by the accumulation steps, exactly as DeepSpeed
computes it. (`jax-sft train` instead averages over every scored token of the global
batch; see `jax_sft.core.step`.)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_sft.core.loss import scored_tokens
from jax_sft.core.mode import TrainingMode
from jax_sft.core.step import TrainState, apply_gradients, compiler_options
from jax_sft.sharding.placement import Placement


def _mean_rank_loss(
    graphdef: nnx.GraphDef, mode: TrainingMode, state: dict, trained: dict, mb: dict, ranks: int
) -> jax.Array:
    rows = {k: v.reshape(ranks, -1, v.shape[-1]) for k, v in mb.items()}

    def rank_mean(r: dict) -> jax.Array:
        total = mode.micro_loss(graphdef, state, trained, r)[0]
        return total / jnp.maximum(scored_tokens(r["labels"]), 1).astype(jnp.float32)

    return jnp.mean(jax.vmap(rank_mean)(rows))


def make_micro_steps(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    placement: Placement,
    mode: TrainingMode,
    ranks: int,
    accumulation: int,
) -> dict[str, Callable]:
    """The jitted pieces: "grad" (state, mb) -> (loss, gradients / accumulation), "loss"
    (state, mb) -> loss, "add" (a, b) -> a + b (a donated), "apply" (state, grads, lr)
    -> state (state donated)."""

    def grad(state: TrainState, mb: dict) -> tuple[jax.Array, dict]:
        loss, grads = jax.value_and_grad(
            lambda t: _mean_rank_loss(graphdef, mode, state, t, mb, ranks)
        )(mode.trained(state))
        return loss, jax.tree.map(lambda g: g / accumulation, grads)

    def loss(state: TrainState, mb: dict) -> jax.Array:
        return _mean_rank_loss(graphdef, mode, state, mode.trained(state), mb, ranks)

    def apply(state: TrainState, grads: dict, lr: jax.Array) -> TrainState:
        return apply_gradients(state, grads, lr, optimizer, placement, mode)[0]

    rows, replicated = placement.rows, placement.replicated
    return {
        "grad": jax.jit(
            grad,
            in_shardings=(placement.state, rows),
            out_shardings=(replicated, placement.grads),
            compiler_options=compiler_options(),
        ),
        "loss": jax.jit(loss, in_shardings=(placement.state, rows), out_shardings=replicated),
        "add": jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0),
        "apply": jax.jit(
            apply,
            in_shardings=(placement.state, placement.grads, replicated),
            out_shardings=placement.state,
            donate_argnums=0,
        ),
    }
