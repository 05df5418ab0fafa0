"""What the PyTorch reference refuses, read from the run's config alone, and that config
as `torch-ref train` reads it: both without torch, so an unsupported run is refused
before torch, `transformers` and DeepSpeed load (about a second instead of ten here;
`jax-sft parity` runs this side first and waits for its answer)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from interop.config import RunConfig
from interop.config_files import load_config
from interop.errors import UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed
from interop.prune_config import CALIBRATED


def launch_world_size() -> int:
    """Processes in the run as its launcher says (torchrun and `deepspeed` set WORLD_SIZE),
    before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_config(args: argparse.Namespace, dp: int) -> tuple[RunConfig, list[str]]:
    """YAML, then the DeepSpeed JSON (if any) over it, then `--set` over both; notes.
    What the reference cannot run is refused here."""
    layers, notes = [], []
    if args.deepspeed_config:
        ds, notes = overrides_from_deepspeed(Path(args.deepspeed_config), data_parallel_size=dp)
        layers.append((args.deepspeed_config, ds))
    cfg = load_config(args.config, args.overrides, layers)
    refuse_unsupported(cfg)
    p = cfg.parallel
    if p.data != -1 and p.data * p.fsdp != dp:
        notes.append(
            f"parallel.data x parallel.fsdp is {p.data * p.fsdp}, but DeepSpeed's data-parallel "
            f"size is the number of processes, {dp}"
        )
    return cfg, notes


def refuse_unsupported(cfg: RunConfig) -> None:
    """A UserError naming the first setting of `cfg` the reference does not implement."""
    if cfg.parallel.tensor != 1:
        raise UserError(
            f"parallel.tensor: {cfg.parallel.tensor}; the PyTorch reference has no tensor "
            "parallelism"
        )
    _refuse_pruning(cfg)
    mode = cfg.training_mode
    dense = {"lora": cfg.lora.dense_trainable, "sparse": cfg.sparse.dense_trainable}
    if dense.get(mode):
        raise UserError(
            f"{mode}.dense_trainable: not supported by the PyTorch reference (its regexes are "
            "over the JAX parameter paths); use []"
        )
    if mode == "lora" and cfg.lora.dropout > 0:
        raise UserError("lora.dropout: the JAX backend has no LoRA dropout; use 0 on both sides")


def _refuse_pruning(cfg: RunConfig) -> None:
    p = cfg.prune
    for index, rule in enumerate(p.rules):
        where = f"prune.rules[{index}].method"
        if rule.method == "movement":
            raise UserError(
                f"{where}: movement is not in the PyTorch reference (magnitude, random and "
                "unstructured topk are); train it with jax-sft"
            )
        if rule.method in CALIBRATED:
            raise UserError(
                f"{where}: {rule.method} is not in the PyTorch reference; prune one-shot with "
                f"`jax-sft prune MODEL OUT --method {rule.method} --data FILE` and fine-tune "
                "OUT/hf under a magnitude rule of the same pattern, which keeps its zeros"
            )
        if rule.method == "topk" and rule.pattern != "unstructured":
            raise UserError(
                f"{where}: topk with pattern {rule.pattern} is not in the PyTorch reference "
                "(unstructured topk is); train it with jax-sft"
            )
        if rule.method == "topk" and cfg.parallel.zero_stage == 3:
            raise UserError(
                f"{where}: topk under ZeRO-3 is not supported by the PyTorch reference (its "
                "scores are read outside a module's forward); use zero_stage 0-2 or jax-sft"
            )
    if p.regularization != "none" and p.reg_weight > 0:
        raise UserError(
            f"prune.regularization: {p.regularization} is not in the PyTorch reference; "
            "train it with jax-sft"
        )
