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
from interop.optim_groups import decays
from jax_sft.models.hf_names import NameTable
from jax_sft.models.registry import path_str


def decay_mask(params: Mapping, table: NameTable) -> Mapping:
    """A bool tree like `params`: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decays(table.to_hf_name(path_str(tuple(k.key for k in path)))[0]), params
    )


def make_optimizer(
    cfg: OptimConfig, params: Mapping, table: NameTable
) -> optax.GradientTransformation:
    """The update direction before scaling by -lr."""
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.scale_by_adam(b1=cfg.betas[0], b2=cfg.betas[1], eps=cfg.eps))
    if cfg.weight_decay > 0:
        mask = None if params is None else decay_mask(params, table)
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    return optax.chain(*parts)
