"""AdamW as DeepSpeed-Chat configures it, as an optax chain without a learning rate.

clip(global norm) -> Adam moments -> decoupled weight decay (masked by the shared
no-decay rule). The learning rate is applied by the train step from the one schedule
function in `interop.schedules`, so the schedule is never written twice.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import optax

from interop.config import OptimConfig


def make_optimizer(
    cfg: OptimConfig, decay_mask: Mapping | None, lr_scales: Mapping | None = None
) -> optax.GradientTransformation:
    """The update direction before scaling by -lr; `decay_mask` (a bool tree like the
    trained tree, from the training mode) says which entries take weight decay, and
    `lr_scales` (a float per leaf) gives a group its own peak learning rate, as a
    DeepSpeed parameter group's `lr` does (the schedule multiplies every group alike)."""
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.scale_by_adam(b1=cfg.betas[0], b2=cfg.betas[1], eps=cfg.eps))
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    if lr_scales is not None:
        parts.append(
            optax.stateless(lambda updates, _: jax.tree.map(lambda u, k: u * k, updates, lr_scales))
        )
    return optax.chain(*parts)
