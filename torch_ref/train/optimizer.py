"""AdamW, its parameter groups and the learning-rate schedule, as DeepSpeed's client.

`torch.optim.AdamW` (DeepSpeed's FusedAdam needs CUDA) with the config's betas and eps.
Groups: weight decay by `interop.optim_groups.decays` on the HF name (sparse values and
LoRA factors always decay, as on the JAX side); LoRA factors in their own group at
`lora.learning_rate`. The schedule is a `LambdaLR` whose factor is
`interop.schedules.learning_rate(step) / peak`, the one definition both backends use;
DeepSpeed steps it after every optimizer step, so update k runs at the rate of step k.
Each group's rate is its own peak times that factor, as optax's per-leaf lr scale does.
"""

from __future__ import annotations

import torch

from interop.config import RunConfig
from interop.optim_groups import decays
from interop.schedules import learning_rate
from torch_ref.train.lora import is_lora_param

SPARSE_VALUES = ".values"


def _decays(name: str) -> bool:
    """Sparse values and LoRA factors always; dense weights by DeepSpeed-Chat's rule."""
    return name.endswith(SPARSE_VALUES) or is_lora_param(name) or decays(name)


def param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[dict]:
    """Trainable parameters by (learning rate, weight decay); empty groups dropped."""
    peak = cfg.optim.learning_rate
    lora_peak = cfg.lora.learning_rate if cfg.lora.learning_rate is not None else peak
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = lora_peak if is_lora_param(name) else peak
        decay = cfg.optim.weight_decay if _decays(name) else 0.0
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    o = cfg.optim
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=o.learning_rate, betas=tuple(o.betas), eps=o.eps
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    peak = cfg.optim.learning_rate

    def factor(step: int) -> float:
        return learning_rate(step, peak, cfg.schedule, total_steps) / peak if peak else 0.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
