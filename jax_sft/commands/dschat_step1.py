"""`jax-sft dschat-step1 [DeepSpeed-Chat step-1 flags]`: its command lines, on JAX.

Takes `training/step1_supervised_finetuning/main.py`'s flags verbatim (so a
`run_1.3b.sh` works with `deepspeed main.py` replaced by `jax-sft dschat-step1`), prints
`ppl: <ppl>, loss: <loss>` at each evaluation as the original does, and leaves the final
model in `--output_dir` as a Hugging Face directory (config, weights in the training
dtype, tokenizer). Flags without meaning here are reported, never silently dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from interop.config import ParallelConfig, RunConfig
from interop.frontends.dschat import run_config_from_dschat
from interop.report import emit, eval_printer
from jax_sft.checkpoints.loading import read_checkpoint, write_checkpoint
from jax_sft.sharding.mesh import data_parallel_size, make_mesh
from jax_sft.train.run import train


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dschat-step1",
        add_help=False,
        help="DeepSpeed-Chat step-1 (SFT) flags, run on the JAX backend",
    )
    p.set_defaults(run=run, takes_foreign_flags=True)


def run(args: argparse.Namespace) -> int:
    # The flags never shape the mesh, so a --deepspeed_config's batch-size rule sees the
    # data-parallel size of the default one: every device.
    dp = data_parallel_size(make_mesh(ParallelConfig()))
    data, notes = run_config_from_dschat(
        list(args.foreign_flags), cwd=Path.cwd(), data_parallel_size=dp
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    cfg = RunConfig.model_validate(data)
    summary = train(cfg, allow_existing=True, on_eval=eval_printer("dschat"))
    out = Path(cfg.train.output_dir)
    _, config, flat = read_checkpoint(out / "hf")
    dtype = {"bfloat16": "bfloat16", "float16": "float16"}.get(cfg.model.dtype)
    if dtype is not None:
        import ml_dtypes

        target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
        flat = {k: v.astype(target) for k, v in flat.items()}
        config = {**config, "dtype": dtype}
    write_checkpoint(out, "hf", config, flat, tokenizer_src=out / "hf")
    emit([f"saved the final model to {out}"], summary, cfg.logging.as_json)
    return 0
