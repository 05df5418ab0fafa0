"""The flags of DeepSpeed-Chat's step-1 `main.py`, declared as it declares them.

`dschat_parser()` holds every flag with its default (and the ones
`deepspeed.add_config_arguments` adds), plus jax-sft's `--sparse_*` group, so a `run_*.sh`
script parses unchanged; `notes_on_flags` names the given flags that change nothing here.
What the flags mean for a run is `interop.frontends.dschat`.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

import yaml

from interop.adapter_config import SparseConfig
from interop.errors import UserError

PROG = "jax-sft dschat-step1"
# main.py's `choices` for --lr_scheduler_type (transformers SchedulerType names).
_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, exit status 2 upstream) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def dschat_parser() -> argparse.ArgumentParser:
    """Every flag of DeepSpeed-Chat step-1 `main.py`, with its defaults."""
    p = _Parser(
        prog=PROG,
        description="Finetune a transformers model on a causal language modeling task",
    )
    p.add_argument("--data_path", nargs="*", default=["Dahoas/rm-static"])
    p.add_argument("--data_split", type=str, default="2,4,4")
    p.add_argument("--sft_only_data_path", nargs="*", default=[])
    p.add_argument("--data_output_path", type=str, default="/tmp/data_files/")
    p.add_argument("--model_name_or_path", type=str, required=True)
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--per_device_eval_batch_size", type=int, default=16)
    p.add_argument("--max_seq_len", type=int, default=512)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--num_train_epochs", type=int, default=1)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--lr_scheduler_type", type=str, default="cosine", choices=_SCHEDULERS)
    p.add_argument("--num_warmup_steps", type=int, default=0)
    p.add_argument("--output_dir", type=str, default=None)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--local_rank", type=int, default=-1)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--offload", action="store_true")
    p.add_argument("--dtype", type=str, default="fp16", choices=list(DTYPES))
    p.add_argument("--zero_stage", type=int, default=0)
    p.add_argument("--lora_dim", type=int, default=0)
    p.add_argument("--lora_module_name", type=str, default="decoder.layers.")
    p.add_argument("--only_optimize_lora", action="store_true")
    p.add_argument("--lora_learning_rate", type=float, default=5e-4)
    p.add_argument("--compute_fp32_loss", action="store_true")
    p.add_argument("--enable_tensorboard", action="store_true")
    p.add_argument("--tensorboard_path", type=str, default="step1_tensorboard")
    p.add_argument("--add_eot_token", action="store_true")
    p.add_argument("--eot_token", type=str, default="<|endoftext|>")
    p.add_argument("--print_loss", action="store_true")
    sparse = p.add_argument_group("sparse", "jax-sft's sparse fine-tuning (sparse.* settings)")
    for name, field in SparseConfig.model_fields.items():
        is_list = name in ("target", "dense_trainable")
        sparse.add_argument(
            f"--sparse_{name}",
            nargs="+" if is_list else None,
            default=None,
            type=str if is_list else yaml.safe_load,
            help=field.description,
        )
    ds = p.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    ds.add_argument("--deepspeed", action="store_true")
    ds.add_argument("--deepspeed_config", type=str, default=None)
    ds.add_argument("--deepscale", action="store_true")
    ds.add_argument("--deepscale_config", type=str, default=None)
    return p


# Flags that are accepted, change nothing here, and are worth a note when given.
_NO_EFFECT = {
    "local_rank": "set by the launcher; one process drives every local device here",
    "offload": "there is no CPU offload; optimizer state stays on the accelerator",
    "compute_fp32_loss": "the loss is always computed in float32 here",
    "deepspeed": "DeepSpeed's helper flag for user code",
    "deepscale": "DeepSpeed's deprecated helper flag",
}


# Flags that only matter with `--lora_dim` > 0.
_LORA_FLAGS = ("lora_dim", "lora_module_name", "only_optimize_lora", "lora_learning_rate")


def notes_on_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """One note per given flag that has no effect here."""
    no_effect = dict(_NO_EFFECT)
    if args.lora_dim <= 0:
        no_effect.update({flag: "--lora_dim is not positive: no LoRA" for flag in _LORA_FLAGS})
    notes = []
    for flag, why in no_effect.items():
        value = getattr(args, flag)
        if value != parser.get_default(flag):
            shown = f"--{flag}" if isinstance(value, bool) else f"--{flag} {value}"
            notes.append(f"{shown}: accepted, no effect here ({why})")
    if args.output_dir is None:
        notes.append(
            "no --output_dir: DeepSpeed-Chat would save nothing; train.output_dir's default is used"
        )
    return notes
