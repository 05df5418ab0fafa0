"""`torch-ref train`: config layers, the output directory's rules, train, export.

The config is read as `jax-sft train` reads it: the YAML, a ds.json (if any) laid over it
by `interop.frontends.deepspeed_json`, `--set` over both. The data-parallel size is the
number of processes (`torchrun --nproc_per_node P`); `parallel.data`/`fsdp` describe a
JAX mesh and only earn a note when they disagree. Reading it, and refusing what the
reference cannot run (tensor parallelism among others), is `refusals.run_config`'s,
which the command line calls once more before torch is imported.
The output directory's rules are `interop.run_dir`'s, as for `jax-sft train` (a JAX
run's checkpoint is another run's: its identity names the backend).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import deepspeed
import transformers

from interop.report import emit, eval_printer
from interop.run_dir import run_directory
from torch_ref.logits import save_probe_logits
from torch_ref.train import distributed
from torch_ref.train.build import build
from torch_ref.train.export import export
from torch_ref.train.refusals import run_config
from torch_ref.train.trainer import Trainer


def train(args: argparse.Namespace) -> int:
    deepspeed.utils.logger.setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated")
    distributed.initialize()
    main = distributed.is_main()
    cfg, notes = run_config(args, distributed.world_size())
    out = Path(cfg.train.output_dir)
    with run_directory(
        cfg,
        "torch",
        is_main=main,
        share=distributed.share_int,
        barrier=distributed.barrier,
        overwrite=args.overwrite,
        resume=args.resume,
    ) as work_cfg:
        built = build(work_cfg, args.attn_implementation)
        trainer = Trainer(work_cfg, built)
        for note in [*notes, *built.notes] if main else ():
            print(f"note: {note}", file=sys.stderr)
        summary = trainer.fit(eval_printer(cfg.logging.style))
        export(trainer)
    if args.probe_logits and main:
        save_probe_logits(out / "hf", Path(args.probe_logits))
    summary["output_dir"] = str(out)
    last = summary.get("last_eval") or {}
    lines = [f"trained {summary['steps']} steps; final model: {out}/hf"]
    if last:
        lines.append(f"eval loss {last['eval_loss']:.4f}, ppl {last['eval_ppl']:.3f}")
    if main:
        emit(lines, summary, args.json or cfg.logging.as_json)
    return 0
