"""A jax-sft run that continues a DeepSpeed checkpoint (`train.resume_from`).

DeepSpeed (or `torch-ref train`) trained the first steps; jax-sft trains the rest. The
fp32 master weights become the parameters and the Adam moments optax's `mu` and `nu`,
each laid out as ours by the family's name table, and DeepSpeed's step counts become the
engine's step and Adam's count, so the learning-rate schedule, the data order (batches
are a function of the step) and Adam's bias correction all continue where DeepSpeed
stopped. Only dense runs continue this way: sparse and LoRA runs keep state DeepSpeed's
checkpoint does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax

from interop.errors import UserError
from jax_sft.checkpoints.deepspeed_convert import open_deepspeed_as
from jax_sft.models import registry


def start_from_deepspeed(engine, path: Path) -> int:
    """Set `engine`'s state from the DeepSpeed checkpoint at `path`; the step reached."""
    if engine.mode.key != "params":
        raise UserError(
            f"train.resume_from: only a dense run continues a DeepSpeed checkpoint "
            f"(this one is {engine.cfg.training_mode})"
        )
    opened = open_deepspeed_as(engine.hf_config, Path(path))
    ckpt, names = opened.ckpt, {p: n for p, (n, _) in opened.layout.items()}
    frozen = sorted(n for n in names.values() if n not in ckpt.moments)
    if frozen:
        raise UserError(
            f"{ckpt.dir}: {frozen[0]} was frozen in that run and has no Adam state; a dense "
            "run trains every parameter"
        )
    expected = registry.expected_shapes(engine.hf_config)

    def placed(tree, read: Callable[[str], np.ndarray]):
        def leaf(key_path, old: jax.Array) -> jax.Array:
            path = registry.path_str(tuple(k.key for k in key_path))
            transform = opened.layout[path][1]
            array = transform.to_ours(read(names[path]), expected[path])
            return jax.device_put(array.astype(old.dtype), old.sharding)

        return jax.tree_util.tree_map_with_path(leaf, tree)

    state = engine.state
    step = ckpt.step if ckpt.step is not None else ckpt.global_steps
    opt_state = tuple(
        part._replace(
            count=jax.device_put(np.asarray(step, part.count.dtype), part.count.sharding),
            mu=placed(part.mu, lambda n: ckpt.moments_of(n)[0]),
            nu=placed(part.nu, lambda n: ckpt.moments_of(n)[1]),
        )
        if isinstance(part, optax.ScaleByAdamState)
        else part
        for part in state["opt_state"]
    )
    engine.state = {
        **state,
        "params": placed(state["params"], ckpt.get),
        "opt_state": opt_state,
        "step": jax.device_put(
            np.asarray(ckpt.global_steps, state["step"].dtype), state["step"].sharding
        ),
    }
    engine.global_steps = ckpt.global_steps
    return ckpt.global_steps
