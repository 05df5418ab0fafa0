"""Pruning as a training mode: the whole model trains under masks that only lose entries.

The state keeps the parameters under "params" (trained, as in dense fine-tuning), one
mask per targeted parameter under "masks" (bit-packed, `prune.bits`; nested like the
parameters, so each mask is placed like its weight), for `movement` rules the
accumulated -grad x W under "movement", and for `topk` rules the learned scores under
"scores" (trained with the parameters: the optimizer then sees {"params", "scores"},
see `prune.topk`), and with `distill: squarehead` the frozen dense model under "teacher"
(placed like the parameters; `prune.distill`). Which entries a cut removes is decided
by `interop.pruning.Pruner` in the Hugging Face layout, the one implementation both
backends share: at a cut the ranked weights are gathered to the host, turned into HF
tensors, ranked, and the masks come back in our layout. How the zeros are held is
`prune.updates`. The export is the dense model with exact zeros, or, for rows and heads,
the smaller model with those structures cut out (`interop.pruning.shrink`), and
`pruning.json` beside it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.errors import UserError
from interop.prune_config import CALIBRATED
from interop.pruning.masks import Pruner
from interop.pruning.shrink import pruning_report, shrink
from jax_sft.core.mode import ModeStart, TrainingMode
from jax_sft.core.trees import dotted, hf_decay_mask, leaf_at, nested, update_leaves
from jax_sft.models.hf_names import NameTable
from jax_sft.prune.bits import pack, pack_host, unpack, unpack_host
from jax_sft.prune.calibrated_start import calibrated_start
from jax_sft.prune.distill import distilled_loss
from jax_sft.prune.topk import LearnedMasks
from jax_sft.prune.updates import group_shrink, masked, soft_threshold, to_hf, to_ours, zero_pruned
from jax_sft.sharding.distributed import to_host
from jax_sft.sharding.placement import place


class PruneTraining(TrainingMode):
    """Dense training under masks (see the module docstring)."""

    key = "params"
    sharded_trained = True

    def __init__(self, ctx: ModeStart):
        self.cfg = ctx.cfg.prune
        self.table: NameTable = ctx.table
        flat = dotted(ctx.params)
        self.shapes = {p: tuple(x.shape) for p, x in flat.items()}
        self.hf = {p: self.table.to_hf_name(p) for p in flat}  # our path -> (name, transform)
        self.ours = {name: p for p, (name, _) in self.hf.items()}
        hf_shapes = {name: t.hf_shape(self.shapes[p]) for p, (name, t) in self.hf.items()}
        self.pruner = Pruner(self.cfg, ctx.hf_config, hf_shapes)
        self.targets = [self.ours[n] for n in self.pruner.targets]
        self.ranked = [self.ours[n] for n in self.pruner.ranked]
        self.movement = any(r.method == "movement" for r in self.cfg.rules)
        self.static = sorted(
            {self.ours[m.name] for u in self.pruner.units for m in u.members}
            - {self.ours[m.name] for u in self.pruner.learned() for m in u.members}
        )
        self.learned = (
            LearnedMasks(self.pruner, self.ours, self.hf, self.shapes)
            if self.pruner.learned()
            else None
        )
        self.last_cut = self.cfg.last_cut()
        self.calibration: dict | None = None  # how a wanda / sparsegpt start was calibrated
        if self.cfg.regularization == "group_lasso" and not any(
            u.structured for u in self.pruner.units
        ):
            raise UserError("prune.regularization: group_lasso needs a rows or heads rule")

    @classmethod
    def start(cls, ctx: ModeStart) -> tuple[PruneTraining, dict]:
        mode = cls(ctx)
        masks = mode.pruner.initial_masks()
        arrays = {}
        rule = mode.cfg.rules[0]
        if rule.method in CALIBRATED:  # the only rule (the config says so)
            ours, repaired, mode.calibration = calibrated_start(ctx, rule, mode.targets)
            masks = {mode.hf[p][0]: mode.hf[p][1].to_hf(m) for p, m in ours.items()}
            if repaired is not None:
                arrays["params"] = repaired  # SparseGPT's weights: the run starts from them
        elif mode.pruner.cuts_at(0):
            masks = mode.pruner.cut(0, mode._hf_host(ctx.params, mode.ranked), masks)
        arrays["masks"] = mode._packed(masks)
        if mode.movement:
            zeros = {p: np.zeros(mode.shapes[p], np.float32) for p in mode.ranked}
            arrays["movement"] = nested(zeros)
        if mode.learned is not None:
            scores = mode.learned.initial()
            arrays["scores"] = {"entries": nested(scores["entries"]), "units": scores["units"]}
        if mode.cfg.distill == "squarehead":
            # A copy: the parameters train (and are donated) while the teacher stays.
            arrays["teacher"] = jax.tree.map(jnp.copy, ctx.params)
        return mode, arrays

    def _hf_host(self, tree: Mapping, paths: list[str]) -> dict[str, np.ndarray]:
        """The leaves of the nested `tree` at `paths`, whole on the host, as HF tensors."""
        out = {}
        for p in paths:
            name, transform = self.hf[p]
            out[name] = transform.to_hf(to_host(leaf_at(tree, p)))
        return out

    def _packed(self, masks: Mapping[str, np.ndarray]) -> dict:
        """HF-layout bool masks as the state keeps them: packed, nested, our layout."""
        return nested({p: pack_host(m) for p, m in self._ours_layout(masks).items()})

    def mask(self, masks: Mapping, path: str) -> jax.Array:
        """The bool mask of parameter `path` from the state's packed masks."""
        return unpack(leaf_at(masks, path), self.shapes[path][-1])

    def host_masks(self, masks: Mapping) -> dict[str, np.ndarray]:
        """{our path: bool mask} of packed masks (the state's, or already on the host)."""
        out = {}
        for p in self.targets:
            packed = leaf_at(masks, p)
            packed = to_host(packed) if isinstance(packed, jax.Array) else packed
            out[p] = unpack_host(packed, self.shapes[p][-1])
        return out

    def _hf_masks(self, masks: Mapping) -> dict[str, np.ndarray]:
        return {self.hf[p][0]: self.hf[p][1].to_hf(m) for p, m in self.host_masks(masks).items()}

    def _ours_layout(self, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, mask in masks.items():
            p = self.ours[name]
            out[p] = self.hf[p][1].to_ours(mask, self.shapes[p])
        return out

    def trained(self, state: Mapping) -> Mapping:
        if self.learned is None:
            return state["params"]
        return {"params": state["params"], "scores": state["scores"]}

    def with_trained(self, state: Mapping, trained: Mapping) -> dict:
        if self.learned is None:
            return {**state, "params": trained}
        return {**state, "params": trained["params"], "scores": trained["scores"]}

    def _weights(self, trained: Mapping) -> Mapping:
        return trained if self.learned is None else trained["params"]

    def _held(self, weights: Mapping, masks: Mapping) -> dict:
        """`weights` with the masks of the scheduled (not learned) rules applied."""
        return update_leaves(
            weights, {p: (lambda w, p=p: masked(w, self.mask(masks, p))) for p in self.static}
        )

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        trained = self.trained(state) if trained is None else trained
        out = self._held(self._weights(trained), state["masks"])
        if self.learned is None:
            return out
        learned = self.learned.masks(trained["scores"], state["step"])
        return update_leaves(
            out, {p: (lambda w, p=p: w * learned[p].astype(w.dtype)) for p in learned}
        )

    def micro_loss(
        self, graphdef: nnx.GraphDef, state: Mapping, trained: Mapping, mb: dict
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        if self.cfg.distill == "none":
            return super().micro_loss(graphdef, state, trained, mb)
        student = self.params(state, trained)
        return distilled_loss(graphdef, student, state["teacher"], mb, self.cfg.distill_weight)

    def decay_mask(self, trained: Mapping) -> Mapping:
        """The no-decay rule on the parameters; learned scores decay (DeepSpeed-Chat's
        rule on their names)."""
        weights = hf_decay_mask(self._weights(trained), self.table)
        if self.learned is None:
            return weights
        return {"params": weights, "scores": jax.tree.map(lambda _: True, trained["scores"])}

    def after_update(self, old: Mapping, state: dict, grads: Mapping, lr: jax.Array) -> dict:
        out = dict(state)
        old, grads = self._weights(old), self._weights(grads)
        if self.movement:
            out["movement"] = update_leaves(
                state["movement"],
                {p: (lambda s, p=p: s - leaf_at(grads, p) * leaf_at(old, p)) for p in self.ranked},
            )
        params = state["params"]
        if self.cfg.regularization != "none" and self.cfg.reg_weight > 0:
            t = lr * self.cfg.reg_weight
            # Until the last cut: the regularization prepares the cuts, then stops.
            t = jnp.where(state["step"] - 1 < self.last_cut, t, 0.0)
            params = self._proximal(params, t)
        out["params"] = self._held(params, state["masks"])
        if self.learned is not None:
            # The masks the next step will use, for checkpoints and the export.
            now = self.learned.masks(state["scores"], state["step"], learn=False)
            out["masks"] = update_leaves(
                state["masks"], {p: (lambda _, m=m: pack(m > 0.5)) for p, m in now.items()}
            )
        return out

    def _proximal(self, params: Mapping, t: jax.Array) -> Mapping:
        if self.cfg.regularization == "l1":
            return update_leaves(params, {p: (lambda w: soft_threshold(w, t)) for p in self.ranked})
        changes = {}
        for unit in self.pruner.units:
            if not unit.structured:
                continue
            tensors = {}
            for m in unit.members:
                p = self.ours[m.name]
                tensors[m.name] = to_hf(leaf_at(params, p), self.hf[p][1])
            group_shrink(unit, tensors, t)
            for name, x in tensors.items():
                p = self.ours[name]
                changes[p] = lambda _, x=x, p=p: to_ours(x, self.hf[p][1], self.shapes[p])
        return update_leaves(params, changes)

    def after_step(self, done: int, state: dict) -> dict:
        if done == 0 or not self.pruner.cuts_at(done):
            return state
        movement = self._hf_host(state["movement"], self.ranked) if self.movement else None
        current = self._hf_masks(state["masks"])
        weights = self._hf_host(state["params"], self.ranked)
        new = self.pruner.cut(done, weights, current, movement)
        shardings = jax.tree.map(lambda x: x.sharding, state["masks"])
        masks = place(self._packed(new), shardings)
        keep = {k: state[k] for k in ("params", "opt_state")}
        zeroed = jax.jit(
            self._zeroed,
            out_shardings=jax.tree.map(lambda x: x.sharding, keep),
            donate_argnums=0,
        )(keep, masks)
        return {**state, **zeroed, "masks": masks}

    def _zeroed(self, tree: Mapping, masks: Mapping) -> Mapping:
        """Parameters and Adam moments with the masks' pruned entries at zero."""
        by_keys = {
            tuple(int(k) if k.isdigit() else k for k in p.split(".")): self.mask(masks, p)
            for p in self.static
        }
        return zero_pruned(tree, by_keys)

    def export_tree(self, state: Mapping) -> Mapping:
        return {"masks": state["masks"]}

    def shipped(
        self, hf_config: dict, tensors: dict[str, np.ndarray], tree: Mapping
    ) -> tuple[dict, dict[str, np.ndarray], dict[str, dict]]:
        """The model with exact zeros, structures cut out where a config can say so."""
        masks = self._hf_masks(tree["masks"])
        config, cut, notes = shrink(hf_config, tensors, self.pruner, masks)
        extra = {"calibration": self.calibration} if self.calibration else None
        report = pruning_report(
            self.pruner, masks, shrunk=config != hf_config, notes=notes, extra=extra
        )
        return config, cut, {"pruning.json": report}
