"""Full fine-tuning: the trained tree is the whole parameter tree."""

from __future__ import annotations

from collections.abc import Mapping

from jax_sft.core.mode import ModeStart, TrainingMode
from jax_sft.core.trees import hf_decay_mask
from jax_sft.models.hf_names import NameTable


class DenseTraining(TrainingMode):
    """Every parameter trains; weight decay follows the shared no-decay rule."""

    key = "params"
    sharded_trained = True
    stacked_layers = True

    def __init__(self, table: NameTable):
        self.table = table

    @classmethod
    def start(cls, ctx: ModeStart) -> tuple[DenseTraining, dict]:
        return cls(ctx.table), {}

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        return state["params"] if trained is None else trained

    def decay_mask(self, trained: Mapping) -> Mapping:
        return hf_decay_mask(trained, self.table)
