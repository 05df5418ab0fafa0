"""`torch-ref write-deepspeed TRANSFER DST CONFIG --zero-stage S`: DeepSpeed writes the
checkpoint of a run another framework trained (`jax-sft convert --to deepspeed`).

TRANSFER is an HF directory of the run's fp32 parameters, with its Adam moments under
the same names (`exp_avg.safetensors`, `exp_avg_sq.safetensors`) and its step counts
(`steps.json`). We build the run's engine exactly as `torch-ref train` does for CONFIG
(parameter groups, ZeRO stage S, one rank per process) from those parameters, set the
moments through DeepSpeed's fragment API (each rank sets its own partition; the state
torch would make on the first step is made first), the Adam step and the schedule's
position, and save as `torch-ref train` saves: tag `step_N`,
client state `{"step": N}`, `latest`. Dense runs only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import deepspeed
import torch
from deepspeed.utils import safe_set_full_optimizer_state

from interop.checkpoints.hf import read_tensors
from interop.config import with_sections
from interop.config_files import load_config
from interop.errors import UserError
from torch_ref.train import distributed
from torch_ref.train.build import build
from torch_ref.train.trainer import Trainer


def write_deepspeed(args: argparse.Namespace) -> int:
    """Build the run's engine from TRANSFER's parameters, give it TRANSFER's Adam state and
    steps, and save it to DST as `torch-ref train` would (module docstring)."""
    deepspeed.utils.logger.setLevel(logging.WARNING)
    distributed.initialize()
    transfer, dst = Path(args.transfer), Path(args.dst)
    cfg = load_config(args.config, args.overrides)
    if cfg.training_mode != "dense":
        raise UserError(f"{args.config}: a {cfg.training_mode} run; only dense runs convert")
    cfg = with_sections(
        cfg,
        {
            "model": {"path": str(transfer), "tiny": None, "base": None},
            "parallel": {"zero_stage": args.zero_stage},
            "train": {"output_dir": str(dst.parent / f".{dst.name}.run")},
        },
    )
    trainer = Trainer(cfg, build(cfg))
    steps = json.loads((transfer / "steps.json").read_text())
    moments = {
        key: read_tensors(transfer / f"{key}.safetensors") for key in ("exp_avg", "exp_avg_sq")
    }
    engine = trainer.engine
    _create_adam_state(trainer, float(steps["adam_count"]))
    for name, param in engine.module.named_parameters():
        for key, values in moments.items():
            if name not in values:
                raise UserError(f"{transfer / key}.safetensors: no moments for {name}")
            _set_moment(trainer, param, torch.from_numpy(values[name]), key)
    step = int(steps["step"])
    engine.global_steps = trainer.global_steps = step
    engine.lr_scheduler.last_epoch = step
    engine.save_checkpoint(str(dst), tag=f"step_{step}", client_state={"step": step})
    return 0


def _set_moment(trainer: Trainer, param: torch.nn.Parameter, value: torch.Tensor, key: str) -> None:
    shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps only a slice in `param`
    if trainer.own_norm:  # ZeRO-0 in fp32: torch's own AdamW, unwrapped
        trainer.engine.optimizer.state[param][key] = value.reshape(shape).clone()
    else:
        safe_set_full_optimizer_state(param, value.reshape(shape), key)


def _create_adam_state(trainer: Trainer, count: float) -> None:
    """The Adam state torch creates on the first step, made now (zeros, at step `count`),
    and linked to the parameters' fragments where DeepSpeed partitions it."""
    optimizer = trainer.engine.optimizer
    base = optimizer if trainer.own_norm else optimizer.optimizer
    flats = [p for group in base.param_groups for p in group["params"]]
    flats += getattr(optimizer, "fp32_partitioned_groups_flat", [])  # ZeRO-3's partitions
    for flat in flats:
        state = base.state[flat]
        state["step"] = torch.tensor(count)
        for key in ("exp_avg", "exp_avg_sq"):
            state.setdefault(key, torch.zeros_like(flat))
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2: parameters see their slices of the flat state
        link()
