"""Logits of a Hugging Face model with PyTorch `transformers`, the reference forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

from interop.checkpoints.hf import read_hf_config
from interop.probe import probe_batch


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


def save_probe_logits(model_dir: Path, out_file: Path) -> None:
    """`hf_logits` of `model_dir` on the probe batch of its vocabulary, saved as .npy: what
    `jax-sft parity` compares with the JAX side's, without a process of its own."""
    batch = probe_batch(read_hf_config(model_dir)["vocab_size"])
    np.save(out_file, hf_logits(model_dir, batch))
