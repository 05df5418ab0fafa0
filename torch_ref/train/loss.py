"""Causal-LM cross entropy, summed, with the count it is averaged over.

The same definition as `jax_sft/train/loss.py`: HF-convention labels (aligned with the
inputs, -100 ignored) shifted here, so position t predicts label t+1; the loss of a
global batch is the sum over all its micro-batches and ranks divided by the number of
scored tokens in the whole global batch (`interop.data.batches.Batches.loss_tokens`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interop.data.examples import IGNORE


def loss_sum_and_count(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of token NLLs in float32, number of scored tokens)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return total, int((targets != IGNORE).sum())


def segment_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive [batch, 1, seq, seq] mask of packed rows: a token attends to the
    earlier tokens of its own segment only (0 there, the dtype's minimum elsewhere; a
    padding query, segment 0, attends nowhere). `transformers` takes a 4-D mask as given."""
    seq = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same & causal & (segment_ids[:, None, :] > 0)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def model_inputs(model: torch.nn.Module, mb: dict[str, torch.Tensor]) -> dict:
    """The keyword arguments of an HF forward over micro-batch `mb`: packed rows (given
    with their `segment_ids`) attend within their segments, positions restarting in each."""
    mask = mb["attention_mask"]
    if "segment_ids" in mb:
        mask = segment_mask(mb["segment_ids"], model.dtype)
    return {
        "input_ids": mb["input_ids"],
        "attention_mask": mask,
        "position_ids": mb["positions"],
        "use_cache": False,
    }


def forward_loss(model: torch.nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, scored tokens) of one micro-batch."""
    out = model(**model_inputs(model, mb))
    return loss_sum_and_count(out.logits, mb["labels"])
