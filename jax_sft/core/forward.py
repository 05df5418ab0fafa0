"""The model's forward pass as a pure function of (graphdef, parameter tree, batch)."""

from __future__ import annotations

import jax
from flax import nnx

from jax_sft.core.loss import loss_sum_and_count


def forward_logits(graphdef: nnx.GraphDef, params: dict, mb: dict) -> jax.Array:
    """fp32 logits [batch, seq, vocab] of one micro-batch under `params`."""
    model = nnx.merge(graphdef, params)
    return model(mb["input_ids"], mb["attention_mask"], mb["positions"], mb["segment_ids"])


def forward_loss(graphdef: nnx.GraphDef, params: dict, mb: dict) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, scored tokens) of one micro-batch under `params`."""
    return loss_sum_and_count(forward_logits(graphdef, params, mb), mb["labels"])
