"""`jax-sft train CONFIG.yaml [--set a.b=v ...] [--deepspeed_config ds.json]`: SFT in JAX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interop.arguments import add_json, add_overrides
from interop.config import RunConfig
from interop.config_files import load_config
from interop.frontends.deepspeed_json import overrides_from_deepspeed
from interop.report import emit, eval_printer
from jax_sft.sharding import distributed
from jax_sft.sharding.mesh import data_parallel_size, make_mesh
from jax_sft.train.run import train


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="supervised fine-tuning on the JAX backend")
    p.add_argument("config", nargs="?", help="YAML run config (omit for all defaults)")
    add_overrides(p)
    p.add_argument(
        "--deepspeed_config",
        help="take batch sizes, optimizer, schedule, clipping, "
        "precision and ZeRO stage from a DeepSpeed JSON config",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint in the output directory and resume from it "
        "(a checkpoint there is resumed anyway)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output directory that holds no checkpoint",
    )
    add_json(p)
    p.add_argument(
        "--coordinator",
        help="host:port of process 0, for several processes "
        "(else JAX_COORDINATOR_ADDRESS or torchrun's MASTER_ADDR/MASTER_PORT)",
    )
    p.add_argument("--num-processes", type=int, help="processes in the run (else from the env)")
    p.add_argument("--process-id", type=int, help="this process's index (else from the env)")
    p.set_defaults(run=run)


def run_config(args: argparse.Namespace) -> RunConfig:
    """YAML, then the DeepSpeed JSON (if any) over it, then `--set` over both."""
    layers = []
    if args.deepspeed_config:
        mesh = make_mesh(load_config(args.config, args.overrides).parallel)
        ds, notes = overrides_from_deepspeed(
            Path(args.deepspeed_config), data_parallel_size=data_parallel_size(mesh)
        )
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        layers.append((args.deepspeed_config, ds))
    return load_config(args.config, args.overrides, layers)


def run(args: argparse.Namespace) -> int:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    cfg = run_config(args)
    if cfg.model.tiny:
        steps = cfg.model.pretrain.steps
        print(
            f"base model: {cfg.model.tiny} with a tokenizer and {steps} pretraining steps on "
            f"'{cfg.model.pretrain.corpus}', cached in {cfg.train.output_dir}/base",
            flush=True,
        )
    summary = train(
        cfg, overwrite=args.overwrite, resume=args.resume, on_eval=eval_printer(cfg.logging.style)
    )
    last = summary.get("last_eval") or {}
    lines = [f"trained {summary['steps']} steps; final model: {summary['output_dir']}/hf"]
    if last:
        lines.append(f"eval loss {last['eval_loss']:.4f}, ppl {last['eval_ppl']:.3f}")
    if distributed.is_main():
        emit(lines, summary, args.json or cfg.logging.as_json)
    return 0
