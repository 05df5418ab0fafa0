"""LoRA as a training mode: the optimizer sees the factors (and any dense leaves) only.

The state keeps the base parameters under "params", never updated, and the trained tree
under "trained": {"lora": {kernel path: {"a": [in, r], "b": [r, out]}}, "dense": {dotted
path: leaf}}. The model's parameters are the base with the dense leaves swapped in and
every adapter merged into its kernel (`jax_sft.lora.params`), computed inside the jit.
Frozen leaves are not in the trained tree, so they carry no optimizer state.

Weight decay follows DeepSpeed-Chat's grouping: its LoRA weights sit in the decayed
group, and dense leaves follow the usual no-decay rule on their HF names. DeepSpeed-Chat
also gives the LoRA group its own learning rate (`lora.learning_rate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jax
import numpy as np

from interop.config import LoraConfig
from interop.errors import UserError
from interop.optim_groups import decays
from jax_sft.lora.params import apply_lora, init_lora, scale
from jax_sft.lora.targets import lora_targets
from jax_sft.models.hf_names import NameTable
from jax_sft.sparse.select import matching
from jax_sft.train.trainable import with_dense


def dense_leaves(paths: Iterable[str], cfg: LoraConfig, adapted: Iterable[str]) -> list[str]:
    """The leaves `lora.dense_trainable` names, less the adapted kernels (always frozen,
    as in peft and DeepSpeed-Chat)."""
    if not cfg.dense_trainable:
        return []
    adapted = set(adapted)
    chosen = matching(paths, cfg.dense_trainable, "lora.dense_trainable")
    return [p for p in chosen if p not in adapted]


def init_trained(
    flat_params: Mapping[str, np.ndarray], table: NameTable, cfg: LoraConfig, seed: int
) -> dict:
    """The starting trained tree for the flat base parameters {dotted path: array}."""
    shapes = {p: tuple(v.shape) for p, v in flat_params.items()}
    targets = lora_targets(shapes, table, cfg.target_modules)
    dense = dense_leaves(flat_params, cfg, targets)
    return {
        "lora": init_lora(targets, cfg.rank, seed),
        "dense": {p: flat_params[p] for p in dense},
    }


@dataclass(frozen=True)
class LoraTraining:
    """Trained tree: {"lora": {path: {"a", "b"}}, "dense": {path: leaf}}; see the module."""

    scale: float
    key: str = "trained"

    @classmethod
    def from_config(cls, cfg: LoraConfig) -> LoraTraining:
        if cfg.rank == 0:
            raise UserError("lora.rank: 0 turns LoRA off; give a positive rank")
        if cfg.dropout > 0:
            raise UserError(
                "lora.dropout: the JAX backend merges LoRA into the weights and has no LoRA"
                " dropout; use 0"
            )
        return cls(scale=scale(cfg))

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        trained = state[self.key] if trained is None else trained
        base = with_dense(state["params"], trained["dense"])
        return apply_lora(base, trained["lora"], self.scale)

    def penalty(self, trained: Mapping) -> jax.Array | None:
        return None

    def decay_mask(self, trained: Mapping, table: NameTable) -> Mapping:
        """Every LoRA factor decays; dense leaves follow the no-decay rule."""
        return {
            "lora": {p: {"a": True, "b": True} for p in trained["lora"]},
            "dense": {p: decays(table.to_hf_name(p)[0]) for p in trained["dense"]},
        }


def lora_lr_scales(trained: Mapping, cfg) -> dict | None:
    """Per-leaf multipliers of the learning rate: `lora.learning_rate` / `optim.learning_rate`
    on the factors, 1 on dense leaves (None when the two rates are the same)."""
    peak, lora_peak = cfg.optim.learning_rate, cfg.lora.learning_rate
    if lora_peak is None or lora_peak == peak:
        return None
    ratio = lora_peak / peak if peak else 0.0
    return {
        "lora": jax.tree.map(lambda _: ratio, trained["lora"]),
        "dense": jax.tree.map(lambda _: 1.0, trained["dense"]),
    }
