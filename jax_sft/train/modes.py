"""The training modes a run can use, by the name its config chooses
(`RunConfig.training_mode`). A new way of training adds one line here."""

from __future__ import annotations

from interop.config import RunConfig
from jax_sft.core.dense import DenseTraining
from jax_sft.core.mode import TrainingMode
from jax_sft.lora.mode import LoraTraining
from jax_sft.prune.mode import PruneTraining
from jax_sft.sparse.mode import SparseTraining

MODES: dict[str, type[TrainingMode]] = {
    "dense": DenseTraining,
    "sparse": SparseTraining,
    "lora": LoraTraining,
    "prune": PruneTraining,
}

# The adapter formats some mode continues; a run of another mode merges them instead.
ADAPTER_KINDS = tuple(m.adapter_kind for m in MODES.values() if m.adapter_kind)


def mode_class(cfg: RunConfig) -> type[TrainingMode]:
    return MODES[cfg.training_mode]
