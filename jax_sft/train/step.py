"""The jitted train and eval steps: pure functions of (state, batch), state donated.

The model object is split once (`nnx.split`) into a static graphdef and a parameter
tree; inside the jit the graphdef is merged with the traced parameters. A global batch
arrives as [accumulation, micro_batch, seq]; a `lax.scan` sums the gradients of the
summed token losses over micro-batches, and the sum is divided by the number of scored
tokens in the whole global batch, so 4 micro-batches of 2 give exactly the update of one
batch of 8. Clipping, Adam and weight decay then act on that averaged gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_sft.train.loss import loss_sum_and_count, scored_tokens
from jax_sft.train.trainable import DENSE, Mode

TrainState = dict  # {"params", "opt_state", "step", "rng"}


@dataclass(frozen=True)
class Placement:
    """Shardings of a run's arrays: the state tree, the gradient tree, a global batch."""

    state: dict
    grads: dict
    batch: object
    replicated: object


def forward_loss(graphdef: nnx.GraphDef, params: dict, mb: dict) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, scored tokens) of one micro-batch under `params`."""
    model = nnx.merge(graphdef, params)
    logits = model(mb["input_ids"], mb["attention_mask"], mb["positions"], mb["segment_ids"])
    return loss_sum_and_count(logits, mb["labels"])


def init_state(
    arrays: dict, mode: Mode, optimizer: optax.GradientTransformation, seed: int
) -> TrainState:
    """`arrays` ("params", and for other modes their own trees) plus optimizer
    state for the trained tree, the step counter and the RNG."""
    return {
        **arrays,
        "opt_state": optimizer.init(arrays[mode.key]),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    placement: Placement | None = None,
    mode: Mode = DENSE,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """jit(step)(state, batch [accum, micro, seq], lr) -> (new state, metrics).

    With a placement, the state keeps its shardings across the step and the summed
    gradients are laid out as the ZeRO stage asks (sharded from stage 2 on).
    """

    def step(state: TrainState, batch: dict, lr: jax.Array) -> tuple[TrainState, dict]:
        trained = state[mode.key]
        value_and_grad = jax.value_and_grad(
            lambda t, mb: forward_loss(graphdef, mode.params(state, t), mb)[0]
        )

        def accumulate(grads: dict, mb: dict) -> tuple[dict, jax.Array]:
            loss_sum, g = value_and_grad(trained, mb)
            return jax.tree.map(jnp.add, grads, g), loss_sum

        zeros = jax.tree.map(jnp.zeros_like, trained)
        grads, loss_sums = jax.lax.scan(accumulate, zeros, batch)
        tokens = scored_tokens(batch["labels"])
        denom = jnp.maximum(tokens, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, grads)
        if mode.penalty(trained) is not None:
            grads = jax.tree.map(jnp.add, grads, jax.grad(mode.penalty)(trained))
        if placement is not None:
            grads = jax.lax.with_sharding_constraint(grads, placement.grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], trained)
        trained = jax.tree.map(lambda p, u: p - lr * u, trained, updates)
        new_state = {**state, mode.key: trained, "opt_state": opt_state, "step": state["step"] + 1}
        metrics = {
            "loss": jnp.sum(loss_sums) / denom,
            "grad_norm": optax.tree.norm(grads),
            "tokens": tokens,
        }
        return new_state, metrics

    if placement is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(
        step,
        in_shardings=(placement.state, placement.batch, placement.replicated),
        out_shardings=(placement.state, placement.replicated),
        donate_argnums=0,
    )


def make_eval_step(
    graphdef: nnx.GraphDef, placement: Placement | None = None, mode: Mode = DENSE
) -> Callable[[dict, dict], tuple[jax.Array, jax.Array]]:
    """jit(eval)(state, batch [micro, seq]) -> (sum of token losses, scored tokens)."""
    fn = lambda state, batch: forward_loss(graphdef, mode.params(state), batch)  # noqa: E731
    if placement is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(placement.state, None))
