"""Sparse fine-tuning as a training mode: delta values over a frozen base.

The state keeps the base parameters under "params" (never updated) and the index sets
under "indices"; the trained tree, "trained", holds the delta values and any leaves
trained densely (`sparse.dense_trainable`): {"values": {path: fp32 vector}, "dense":
{path: leaf}}. The model's parameters are the base with those leaves swapped in and every
delta scattered in, inside the jit. The entries come from an adapter being continued or
from the selection method (`select`, with `scores` for fisher and lt-sft); SpIEL moves
them during training (`spiel`) through the step hooks. The export is a sparse adapter
with indices in the HF tensors' own layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interop.config import RunConfig
from interop.sparse_format import checked_adapter, write_adapter
from jax_sft.checkpoints.loading import deltas_in_our_layout
from jax_sft.core.mode import ModeStart, TrainingMode
from jax_sft.core.trees import dense_decay, dotted, update_leaves, with_dense
from jax_sft.models.hf_names import NameTable
from jax_sft.sharding.distributed import to_host
from jax_sft.sparse.deltas import apply_delta
from jax_sft.sparse.scores import selection_scores
from jax_sft.sparse.select import dense_trainable, select
from jax_sft.sparse.spiel import Spiel


@dataclass
class SparseTraining(TrainingMode):
    """`sparse.regularization` l1 / l2 adds `reg_weight` x sum|v| / sum v^2 over the delta
    values to the loss, which keeps the fine-tuned model close to its base. `table` gives
    the decay mask; `shapes`, `model_dir` and the base's `fingerprint` the export."""

    key = "trained"
    adapter_kind = "sparse-adapter"

    cfg: RunConfig
    table: NameTable | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None
    model_dir: Path | None = None
    fingerprint: str | None = None
    spiel: Spiel | None = None

    @classmethod
    def start(cls, ctx: ModeStart) -> tuple[SparseTraining, dict]:
        cfg = ctx.cfg
        flat = dotted(ctx.params)
        shapes = {p: tuple(x.shape) for p, x in flat.items()}
        mode = cls(cfg, ctx.table, shapes, ctx.model_dir, ctx.base_fingerprint())
        if ctx.adapter is not None:
            _, deltas = checked_adapter(ctx.adapter, ctx.model_dir, mode.fingerprint)
            ours = deltas_in_our_layout(ctx.adapter, deltas, ctx.table, shapes)
            indices = {p: idx for p, (idx, _) in ours.items()}
            values = {p: v for p, (_, v) in ours.items()}
            ctx.notes.append(
                f"continuing the {sum(i.size for i in indices.values())} entries of "
                f"{ctx.adapter}; sparse.method and the budget do not choose them again"
            )
        else:
            scores = selection_scores(ctx, flat)
            indices = select(flat, cfg.sparse, cfg.train.seed, scores)
            values = {p: np.zeros(idx.shape, np.float32) for p, idx in indices.items()}
        dense = {p: to_host(flat[p]) for p in dense_trainable(flat, cfg.sparse)}
        if cfg.sparse.method == "spiel":
            mode.spiel = Spiel(ctx.graphdef, mode, list(indices), cfg.sparse, ctx.total_steps)
        return mode, {"indices": indices, "trained": {"values": values, "dense": dense}}

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        trained = state[self.key] if trained is None else trained
        base = with_dense(state["params"], trained["dense"])
        indices, values = state["indices"], trained["values"]
        return update_leaves(
            base, {p: (lambda w, p=p: apply_delta(w, indices[p], values[p])) for p in values}
        )

    def penalty(self, trained: Mapping) -> jax.Array | None:
        s = self.cfg.sparse
        if s.regularization == "none" or s.reg_weight == 0:
            return None
        values = jax.tree.leaves(trained["values"])
        if s.regularization == "l1":
            # sign(v) * v is |v| with subgradient 0 at 0 (jnp.abs has +1 there): a delta
            # still at zero is not pushed off it by the penalty.
            total = sum(jnp.sum(jnp.sign(v) * v) for v in values)
        else:
            total = sum(jnp.sum(jnp.square(v)) for v in values)
        return s.reg_weight * total

    def decay_mask(self, trained: Mapping) -> Mapping:
        """Weight decay acts on every delta value; dense leaves follow the no-decay rule."""
        return {
            "values": {p: True for p in trained["values"]},
            "dense": dense_decay(trained["dense"], self.table),
        }

    def before_step(self, step: int, state: dict, batch: dict) -> None:
        if self.spiel is not None:
            self.spiel.observe(step, state, batch)

    def after_step(self, done: int, state: dict) -> dict:
        return state if self.spiel is None else self.spiel.update(done, state)

    def adapter_tree(self, state: Mapping) -> Mapping:
        return {"indices": state["indices"], "values": state["trained"]["values"]}

    def write_adapter(self, dst: Path, tree: Mapping) -> None:
        """The deltas as a sparse adapter, indices in the HF tensors' flat layout."""
        deltas = {}
        for path, idx in tree["indices"].items():
            name, transform = self.table.to_hf_name(path)
            deltas[name] = (transform.hf_flat_index(idx, self.shapes[path]), tree["values"][path])
        s = self.cfg.sparse
        config = {
            "method": s.method,
            "density": s.density,
            "num_tunable": s.num_tunable,
            "target": s.target,
            "base_model": str(self.model_dir),
            "base_fingerprint": self.fingerprint,
        }
        write_adapter(dst, deltas, config)
