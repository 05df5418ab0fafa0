"""The jitted train and eval steps: pure functions of (state, batch), state donated.

The model object is split once (`nnx.split`) into a static graphdef and a parameter
tree; inside the jit the graphdef is merged with the traced parameters. A global batch
arrives as [accumulation, micro_batch, seq]; a `lax.scan` sums the gradients of the
summed token losses over micro-batches, and the sum is divided by the number of scored
tokens in the whole global batch, so 4 micro-batches of 2 give exactly the update of one
batch of 8. Clipping, Adam and weight decay then act on that averaged gradient.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_sft.core.forward import forward_loss
from jax_sft.core.loss import scored_tokens
from jax_sft.core.mode import TrainingMode
from jax_sft.sharding.placement import Placement, place

TrainState = dict  # {"params", the mode's trees, "opt_state", "step", "rng"}


def compiler_options() -> dict[str, str | int]:
    """XLA options for the train and eval steps, on the CPU; an option the user's
    XLA_FLAGS already set is left to it.
    - The memory-optimized scheduler: under its default (concurrency-optimized) order
      the train step of the 50M Llama at batch 8 x 512 needs 4.44 GB of temporaries,
      under this one 3.62 GB (`memory_analysis()`), at the same speed on two cores.
    - LLVM at -O2, not XLA's default -O3, for the kernels XLA generates (elementwise work
      and reductions; matmuls run in a library): a scanned step's compile is nearly all
      kernel generation and takes ~15% less time, and the kernels ran as fast
      (docs/benchmarks.md)."""
    if jax.default_backend() != "cpu":
        return {}
    options = {
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
        "xla_backend_optimization_level": 2,
    }
    user_flags = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in options.items() if f"--{k}=" not in user_flags}


def init_state(
    params: dict,
    arrays: Mapping,
    mode: TrainingMode,
    optimizer: optax.GradientTransformation,
    seed: int,
    placement: Placement,
) -> TrainState:
    """The train state around the already placed `params`: the mode's host `arrays`
    placed, optimizer state for the trained tree, the step counter and the RNG. The
    parameters are not copied."""
    state = {"params": params}
    state.update({k: place(v, placement.state[k]) for k, v in arrays.items()})
    init = jax.jit(optimizer.init, out_shardings=placement.state["opt_state"])
    state["opt_state"] = init(mode.trained(state))
    scalars = {
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }
    state.update(
        jax.jit(lambda: scalars, out_shardings={k: placement.replicated for k in scalars})()
    )
    return state


def apply_gradients(
    state: TrainState,
    grads: dict,
    lr: jax.Array,
    optimizer: optax.GradientTransformation,
    placement: Placement,
    mode: TrainingMode,
) -> tuple[TrainState, dict]:
    """One optimizer update of the trained tree from its averaged gradients (the mode's
    penalty added, laid out as the ZeRO stage asks); (new state, the gradients used)."""
    trained = mode.trained(state)
    if mode.penalty(trained) is not None:
        grads = jax.tree.map(jnp.add, grads, jax.grad(mode.penalty)(trained))
    grads = jax.lax.with_sharding_constraint(grads, placement.grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], trained)
    new = jax.tree.map(lambda p, u: p - lr * u, trained, updates)
    new_state = mode.with_trained(state, new) | {"opt_state": opt_state, "step": state["step"] + 1}
    return mode.after_update(trained, new_state, grads, lr), grads


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    placement: Placement,
    mode: TrainingMode,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """jit(step)(state, batch [accum, micro, seq], lr) -> (new state, metrics).

    The state keeps its shardings across the step and the summed gradients are laid out
    as the ZeRO stage asks (sharded from stage 2 on).
    """

    def step(state: TrainState, batch: dict, lr: jax.Array) -> tuple[TrainState, dict]:
        trained = mode.trained(state)
        value_and_grad = jax.value_and_grad(
            lambda t, mb: mode.micro_loss(graphdef, state, t, mb), has_aux=True
        )

        def accumulate(grads: dict, mb: dict) -> tuple[dict, dict]:
            (_, sums), g = value_and_grad(trained, mb)
            return jax.tree.map(jnp.add, grads, g), sums

        zeros = jax.tree.map(jnp.zeros_like, trained)
        grads, sums = jax.lax.scan(accumulate, zeros, batch)
        tokens = scored_tokens(batch["labels"])
        denom = jnp.maximum(tokens, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, grads)
        new_state, grads = apply_gradients(state, grads, lr, optimizer, placement, mode)
        metrics = {k: jnp.sum(v) / denom for k, v in sums.items()}
        metrics |= {"grad_norm": optax.tree.norm(grads), "tokens": tokens}
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(placement.state, placement.batch, placement.replicated),
        out_shardings=(placement.state, placement.replicated),
        donate_argnums=0,
        compiler_options=compiler_options(),
    )


def make_eval_step(
    graphdef: nnx.GraphDef, placement: Placement, mode: TrainingMode
) -> Callable[[dict, dict], tuple[jax.Array, jax.Array]]:
    """jit(eval)(state, batch [micro, seq]) -> (sum of token losses, scored tokens); the
    batch's rows are split over the data-parallel axes."""
    return jax.jit(
        lambda state, batch: forward_loss(graphdef, mode.params(state), batch),
        in_shardings=(placement.state, placement.rows),
        out_shardings=placement.replicated,
        compiler_options=compiler_options(),
    )
