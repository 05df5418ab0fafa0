"""What both trainers refuse before a run starts, written once."""

from __future__ import annotations

from collections.abc import Mapping

from interop.config import RunConfig
from interop.errors import UserError
from interop.vocab import max_positions


def check_data_given(cfg: RunConfig) -> None:
    """Training data is named (checked before anything slow, such as a tiny base)."""
    if not cfg.data.sources:
        raise UserError("data.sources: no training data given")


def check_run(cfg: RunConfig, hf_config: Mapping) -> None:
    """No dropout (the JAX models have none, so neither side uses it), and sequences
    that fit the model's positions."""
    if cfg.model.dropout:
        raise UserError("model.dropout: dropout is not implemented on the JAX backend; use 0")
    limit = max_positions(hf_config)
    if cfg.data.max_seq_len > limit:
        raise UserError(
            f"data.max_seq_len: {cfg.data.max_seq_len} is beyond the model's {limit} positions"
        )
