"""Tiny random `transformers` models of every supported family, for parity tests.

Weights are redrawn with a larger spread than HF's init (biases and norm weights
included), so a misplaced bias, a wrong transpose or a wrong norm shows up in the logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import transformers

VOCAB = 96

CONFIGS = {
    "llama-gqa-untied": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),
    "llama-tied-rope-llama3": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rope_theta=50.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=64,
    ),
    "opt-pre-ln": lambda: transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        do_layer_norm_before=True,
    ),
    "opt-post-ln-proj": lambda: transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
        do_layer_norm_before=False,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


def make_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A float32 eval-mode model with every parameter redrawn from a seeded normal."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        CONFIGS[name](), attn_implementation="eager"
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            base = 1.0 if pname.endswith("norm.weight") or ".ln_" in pname else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def hf_logits(model: transformers.PreTrainedModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch["input_ids"]),
            attention_mask=torch.from_numpy(batch["attention_mask"]),
            position_ids=torch.from_numpy(batch["positions"]),
        )
    return out.logits.float().numpy()


def other_base(base: Path, dst: Path) -> Path:
    """A copy of the HF model `base` with one weight changed: another base fingerprint."""
    shutil.copytree(base, dst)
    model = transformers.AutoModelForCausalLM.from_pretrained(dst)
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    model.save_pretrained(dst)
    return dst
