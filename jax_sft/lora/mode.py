"""LoRA as a training mode: the optimizer sees the factors (and any dense leaves) only.

The state keeps the base parameters under "params", never updated, and the trained tree
under "trained": {"lora": {kernel path: {"a": [in, r], "b": [r, out]}}, "dense": {dotted
path: leaf}}. The model's parameters are the base with the dense leaves swapped in and
every adapter merged into its kernel (`jax_sft.lora.params`), computed inside the jit.
Frozen leaves are not in the trained tree, so they carry no optimizer state. A run from
a peft adapter continues its factors (and its scaling); the export is a peft adapter.

Weight decay follows DeepSpeed-Chat's grouping: its LoRA weights sit in the decayed
group, and dense leaves follow the usual no-decay rule on their HF names. DeepSpeed-Chat
also gives the LoRA group its own learning rate (`lora.learning_rate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from interop.adapter_config import LoraConfig
from interop.config import RunConfig
from interop.errors import UserError
from interop.lora_format import scaling
from jax_sft.core.mode import ModeStart, TrainingMode
from jax_sft.core.trees import dense_decay, dense_leaves, dotted, with_dense
from jax_sft.lora.params import apply_lora, init_lora, scale
from jax_sft.lora.peft_io import export_peft, import_peft
from jax_sft.lora.targets import lora_targets
from jax_sft.models.hf_names import NameTable
from jax_sft.sharding.distributed import to_host


def init_trained(
    flat_params: Mapping[str, np.ndarray | jax.Array], table: NameTable, cfg: LoraConfig, seed: int
) -> dict:
    """The starting trained tree for the flat base parameters {dotted path: array}."""
    shapes = {p: tuple(v.shape) for p, v in flat_params.items()}
    targets = lora_targets(shapes, table, cfg.target_modules)
    dense = dense_leaves(flat_params, cfg.dense_trainable, "lora.dense_trainable", targets)
    return {
        "lora": init_lora(targets, cfg.rank, seed),
        "dense": {p: _host(flat_params[p]) for p in dense},
    }


def _host(leaf: np.ndarray | jax.Array) -> np.ndarray:
    return to_host(leaf) if isinstance(leaf, jax.Array) else np.asarray(leaf)


@dataclass
class LoraTraining(TrainingMode):
    """Trained tree: {"lora": {path: {"a", "b"}}, "dense": {path: leaf}}; see the module.
    `table` gives the decay mask; `cfg`, `shapes` and `model_dir` the learning rates
    and the export."""

    key = "trained"
    adapter_kind = "lora-adapter"

    scale: float
    table: NameTable | None = None
    cfg: RunConfig | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None
    model_dir: Path | None = None

    @classmethod
    def start(cls, ctx: ModeStart) -> tuple[LoraTraining, dict]:
        cfg = ctx.cfg
        check(cfg.lora)
        flat = dotted(ctx.params)
        shapes = {p: tuple(x.shape) for p, x in flat.items()}
        trained = init_trained(flat, ctx.table, cfg.lora, cfg.train.seed)
        lora_scale = scale(cfg.lora)
        if ctx.adapter is not None:
            config, trained["lora"] = import_peft(ctx.adapter, ctx.table, shapes)
            if config["r"] != cfg.lora.rank:
                raise UserError(
                    f"lora.rank: {cfg.lora.rank}, but {ctx.adapter} has rank {config['r']}"
                )
            lora_scale = scaling(config)
            ctx.notes.append(f"continuing the LoRA factors of {ctx.adapter}")
        mode = cls(lora_scale, ctx.table, cfg, shapes, ctx.model_dir)
        return mode, {"trained": trained}

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        trained = state[self.key] if trained is None else trained
        base = with_dense(state["params"], trained["dense"])
        return apply_lora(base, trained["lora"], self.scale)

    def decay_mask(self, trained: Mapping) -> Mapping:
        """Every LoRA factor decays; dense leaves follow the no-decay rule."""
        return {
            "lora": {p: {"a": True, "b": True} for p in trained["lora"]},
            "dense": dense_decay(trained["dense"], self.table),
        }

    def lr_scales(self, trained: Mapping) -> Mapping | None:
        """`lora.learning_rate` / `optim.learning_rate` on the factors, 1 on dense leaves
        (None when the two rates are the same)."""
        peak, lora_peak = self.cfg.optim.learning_rate, self.cfg.lora.learning_rate
        if lora_peak is None or lora_peak == peak:
            return None
        ratio = lora_peak / peak if peak else 0.0
        return {
            "lora": jax.tree.map(lambda _: ratio, trained["lora"]),
            "dense": jax.tree.map(lambda _: 1.0, trained["dense"]),
        }

    def adapter_tree(self, state: Mapping) -> Mapping:
        return state["trained"]["lora"]

    def write_adapter(self, dst: Path, tree: Mapping) -> None:
        export_peft(dst, tree, self.table, self.shapes, self.cfg.lora, str(self.model_dir))


def check(cfg: LoraConfig) -> None:
    """What the JAX LoRA cannot do: rank 0 (that is no LoRA) and LoRA dropout."""
    if cfg.rank == 0:
        raise UserError("lora.rank: 0 turns LoRA off; give a positive rank")
    if cfg.dropout > 0:
        raise UserError(
            "lora.dropout: the JAX backend merges LoRA into the weights and has no LoRA"
            " dropout; use 0"
        )
