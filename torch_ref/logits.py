"""Logits of a Hugging Face model with PyTorch `transformers`, the reference forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers


def hf_logits(model_dir: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    """fp32 logits [batch, seq, vocab]; positions are passed explicitly (pads at 0)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch["input_ids"]).long(),
            attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
            position_ids=torch.from_numpy(batch["positions"]).long(),
        )
    return out.logits.float().numpy()
