"""The model's forward pass as a pure function of (graphdef, parameter tree, batch)."""

from __future__ import annotations

import jax
from flax import nnx

from jax_sft.core.chunked_loss import chunked_loss_sum_and_count


def _inputs(mb: dict) -> tuple:
    return mb["input_ids"], mb["attention_mask"], mb["positions"], mb["segment_ids"]


def forward_hidden(graphdef: nnx.GraphDef, params: dict, mb: dict) -> jax.Array:
    """The final hidden states [batch, seq, embed] of one micro-batch (no output layer)."""
    return nnx.merge(graphdef, params)(*_inputs(mb), head=False)


def forward_loss(graphdef: nnx.GraphDef, params: dict, mb: dict) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, scored tokens) of one micro-batch under `params`; the
    logits are never materialised whole (`chunked_loss`)."""
    model = nnx.merge(graphdef, params)
    hidden = model(*_inputs(mb), head=False)
    return chunked_loss_sum_and_count(hidden, model.output_kernel(), mb["labels"])
