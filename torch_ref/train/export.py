"""OUT/hf (and OUT/adapter for sparse and LoRA runs) from the trained engine.

The trained values are DeepSpeed's float32 master weights, whatever the ZeRO stage or
precision: `safe_get_full_fp32_param` gathers them (a collective under ZeRO-3, so every
rank takes part); ZeRO-0 in bf16/fp16 keeps them in its unfused optimizer's
`fp32_groups`; the unwrapped ZeRO-0 fp32 optimizer keeps them in the module itself.
Rank 0 then builds the run's module afresh on the CPU (frozen weights exactly as loaded,
not the bf16 copies DeepSpeed computes with), loads the trained values into it and
writes: dense, the model; sparse, the adapter (indices + values) and the merged model
base + delta; LoRA, peft's adapter and the merged model (`merge_and_unload`); pruning,
the masked model (structures cut out where its config allows) and `pruning.json`. Weights
are written in `model.param_dtype`, with the prepared tokenizer.
"""

from __future__ import annotations

import torch
from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
from deepspeed.utils import safe_get_full_fp32_param

from interop.outputs import default_permissions, output_dir
from torch_ref.train import distributed, prune, sparse
from torch_ref.train.build import build
from torch_ref.train.model import restore_dropout
from torch_ref.train.trainer import Trainer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _unfused_masters(optimizer: object) -> dict[int, torch.Tensor]:
    """id(module parameter) -> float32 master of DeepSpeed's unfused mixed-precision
    optimizer (ZeRO-0 with bf16/fp16), which `safe_get_full_fp32_param` does not know."""
    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return {}
    groups = zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True)
    return {id(p): m for low, high in groups for p, m in zip(low, high, strict=True)}


def trained_values(trainer: Trainer) -> dict[str, torch.Tensor]:
    """{parameter name: full float32 CPU tensor} of every trained parameter."""
    masters = _unfused_masters(trainer.engine.optimizer)
    out = {}
    for name, param in trainer.engine.module.named_parameters():
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)
        if full is None:
            full = masters.get(id(param), param)
        out[name] = full.detach().float().cpu().clone()
    return out


def export(trainer: Trainer) -> None:
    """Write OUT/hf (and OUT/adapter); every rank calls it."""
    values = trained_values(trainer)
    masks = prune.masks(trainer.engine.module)
    if distributed.is_main():
        _write(trainer, values, masks)
    distributed.barrier()


def _write(trainer: Trainer, values: dict[str, torch.Tensor], masks: dict) -> None:
    cfg, out = trainer.cfg, trainer.out
    fresh = build(cfg)
    model = fresh.model
    if fresh.mode == "prune":
        prune.set_masks(model, masks)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value.reshape(params[name].shape))
    base = str(fresh.source.model_dir)
    if fresh.mode == "sparse":
        with output_dir(out / "adapter", overwrite=True) as tmp:
            sparse.export_adapter(tmp, model, cfg, base, fresh.base_fingerprint)
        sparse.merge(model)
    elif fresh.mode == "lora":
        model.peft_config["default"].base_model_name_or_path = base
        with output_dir(out / "adapter", overwrite=True) as tmp:
            model.save_pretrained(str(tmp))
            default_permissions(tmp)
        model = model.merge_and_unload()
    elif fresh.mode == "prune":
        prune.unmask(model)
    restore_dropout(model, fresh.source.model_dir)
    with output_dir(out / "hf", overwrite=True) as tmp:
        model.to(DTYPES[cfg.model.param_dtype]).save_pretrained(str(tmp))
        fresh.tokenizer.save_pretrained(str(tmp))
        if fresh.mode == "prune":
            prune.ship(tmp, out / "pruning.json", fresh.pruner, masks)
        default_permissions(tmp)
