"""What `fisher` and `lt-sft` rank entries by, computed on the placed base parameters.

fisher: summed squared per-example gradients (`fisher`). lt-sft: |W_after - W_base|
after `sparse.dense_steps` steps of full fine-tuning on the run's own batches, schedule,
optimizer and mesh; training then restarts from the base with only those entries.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from interop.data.batches import Batches
from interop.schedules import learning_rate
from jax_sft.core.dense import DenseTraining
from jax_sft.core.mode import ModeStart
from jax_sft.core.optimizer import make_optimizer
from jax_sft.core.step import init_state, make_train_step
from jax_sft.core.trees import dotted
from jax_sft.sharding.distributed import to_host
from jax_sft.sharding.placement import build_placement
from jax_sft.sparse.fisher import fisher_scores
from jax_sft.sparse.select import dense_trainable, targets


def selection_scores(ctx: ModeStart, flat: Mapping[str, jax.Array]) -> dict | None:
    """{path: score per entry} for fisher and lt-sft, None for the other methods."""
    cfg = ctx.cfg
    method = cfg.sparse.method
    if method not in ("fisher", "lt-sft"):
        return None
    shapes = {p: tuple(x.shape) for p, x in flat.items()}
    chosen = targets(shapes, cfg.sparse.target, dense_trainable(shapes, cfg.sparse))
    if method == "fisher":
        rows = Batches(
            ctx.train.examples,
            batch_size=1,
            seq_len=ctx.train.seq_len,
            pad_id=ctx.train.pad_id,
            packing=False,
            seed=cfg.train.seed,
        )
        return fisher_scores(ctx.graphdef, ctx.params, rows, chosen, cfg.sparse.fisher_samples)
    tuned = dotted(_dense_phase(ctx))
    return {p: np.abs(to_host(tuned[p]) - to_host(flat[p])) for p in chosen}


def _dense_phase(ctx: ModeStart) -> dict:
    """The parameters after `sparse.dense_steps` steps of full fine-tuning (on a copy)."""
    cfg, steps = ctx.cfg, ctx.cfg.sparse.dense_steps
    mode = DenseTraining(ctx.table)
    optimizer = make_optimizer(cfg.optim, mode.decay_mask(ctx.params))
    placement = build_placement(
        ctx.mesh,
        cfg.parallel.zero_stage,
        ctx.params,
        ctx.axes,
        jax.eval_shape(optimizer.init, ctx.params),
    )
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=placement.state["params"])
    state = init_state(copy(ctx.params), {}, mode, optimizer, cfg.train.seed, placement)
    step = make_train_step(ctx.graphdef, optimizer, placement, mode)
    for i in range(steps):
        lr = learning_rate(i, cfg.optim.learning_rate, cfg.schedule, steps)
        state, _ = step(state, ctx.global_batch(i), np.float32(lr))
    return state["params"]
