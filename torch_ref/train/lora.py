"""LoRA with peft: the factors train, the base stays frozen.

`model.path` a peft LoRA adapter: `PeftModel.from_pretrained(is_trainable=True)` starts
from its factors (the parity harness passes the JAX side's initial ones this way, so both
sides start identical); otherwise `get_peft_model` makes new ones with peft's own
initialisation (not the JAX side's RNG, so such runs are not comparable step by step).
LoRA dropout is forced to 0, as the JAX backend refuses it. `lora.dense_trainable` names
JAX parameter paths and is refused here.

The factors decay (DeepSpeed-Chat and the JAX side put them in the decayed group) and
train at `lora.learning_rate` (None: `optim.learning_rate`) on the common schedule.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interop.checkpoints.hf import read_json_object
from interop.config import RunConfig
from interop.errors import UserError
from interop.lora_format import CONFIG


def attach(model: torch.nn.Module, cfg: RunConfig, adapter: Path | None) -> torch.nn.Module:
    """`model` wrapped by peft with trainable factors (from `adapter` when given)."""
    import peft  # only LoRA runs pay for its import

    if adapter is None:
        config = peft.LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            target_modules=cfg.lora.target_modules,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(model, config)
    rank = read_json_object(adapter / CONFIG).get("r")
    if rank != cfg.lora.rank:
        raise UserError(f"lora.rank: {cfg.lora.rank}, but {adapter} has rank {rank}")
    config = peft.LoraConfig.from_pretrained(str(adapter))
    config.lora_dropout = 0.0
    config.inference_mode = False
    return peft.PeftModel.from_pretrained(model, str(adapter), config=config, is_trainable=True)


def is_lora_param(name: str) -> bool:
    """True for the factors' parameter names (`...lora_A.default.weight`, ...)."""
    return ".lora_A." in name or ".lora_B." in name
