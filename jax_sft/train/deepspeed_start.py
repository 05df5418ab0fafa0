"""A jax-sft run that continues a DeepSpeed run (`train.resume_from`).

DeepSpeed (or `torch-ref train`) trained the first steps; jax-sft trains the rest. The
run's weights become the parameters and its Adam moments optax's `mu` and `nu`, each in
our layout, and its step counts the engine's step and Adam's count, so the learning-rate
schedule, the data order (batches are a function of the step) and Adam's bias correction
all continue where DeepSpeed stopped. The state is read from the DeepSpeed checkpoint
itself or from an Orbax model that carries it (`jax_sft.checkpoints.carried_state`). Only
dense runs continue this way: sparse and LoRA runs keep state DeepSpeed's does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax

from interop.errors import UserError
from jax_sft.checkpoints.carried_state import carried_state
from jax_sft.models import registry, stacked


def start_from_deepspeed(engine, path: Path) -> int:
    """Set `engine`'s state from the DeepSpeed run's state at `path`; the step reached."""
    if engine.cfg.training_mode != "dense":
        raise UserError(
            f"train.resume_from: only a dense run continues a DeepSpeed run "
            f"(this one is {engine.cfg.training_mode})"
        )
    carried = carried_state(engine.hf_config, Path(path))

    def placed(tree, read: Callable[[str], np.ndarray]):
        def leaf(key_path, old: jax.Array) -> jax.Array:
            path = registry.path_str(tuple(k.key for k in key_path))
            if stacked.is_stacked_path(path):
                layers = range(old.shape[0])
                array = np.stack([read(stacked.per_layer_path(path, i)) for i in layers])
            else:
                array = read(path)
            return jax.device_put(array.astype(old.dtype), old.sharding)

        return jax.tree_util.tree_map_with_path(leaf, tree)

    def scalar(value: int, like: jax.Array) -> jax.Array:
        return jax.device_put(np.asarray(value, like.dtype), like.sharding)

    state = engine.state
    opt_state = tuple(
        part._replace(
            count=scalar(carried.adam_count, part.count),
            mu=placed(part.mu, lambda p: carried.moments(p)[0]),
            nu=placed(part.nu, lambda p: carried.moments(p)[1]),
        )
        if isinstance(part, optax.ScaleByAdamState)
        else part
        for part in state["opt_state"]
    )
    engine.state = {
        **state,
        "params": placed(state["params"], carried.weight),
        "opt_state": opt_state,
        "step": scalar(carried.global_steps, state["step"]),
    }
    engine.global_steps = carried.global_steps
    return carried.global_steps
