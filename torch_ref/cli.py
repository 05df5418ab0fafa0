"""`torch-ref` entry point: the PyTorch side of commands that need both frameworks.

`torch-ref train CONFIG.yaml [--set a.b=v ...] [--deepspeed_config ds.json] [--overwrite]
[--resume] [--attn_implementation eager|sdpa] [--json]` is the PyTorch/DeepSpeed reference
trainer; for several processes,
`torchrun --nproc_per_node P -m torch_ref.cli train ...` (or the `deepspeed` launcher).
`torch-ref write-deepspeed` writes a DeepSpeed checkpoint for `jax-sft convert --to
deepspeed`, which launches it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from interop.arguments import add_json, add_overrides
from interop.boundary import run_command
from interop.errors import BackendError, UserError
from torch_ref.accelerator import default_to_cpu

TORCH_PACKAGES = ("torch", "deepspeed", "peft")


def _logits(args: argparse.Namespace) -> int:
    import numpy as np

    from torch_ref.logits import hf_logits

    batch = dict(np.load(args.batch))
    np.save(args.out, hf_logits(Path(args.model), batch))
    return 0


def _train(args: argparse.Namespace) -> int:
    from torch_ref.train.refusals import launch_world_size, run_config

    run_config(args, launch_world_size())  # what the reference refuses, before torch loads
    default_to_cpu()
    from torch_ref.train.run import train

    return train(args)


def _bench_generate(args: argparse.Namespace) -> int:
    from torch_ref.bench_generate import time_generate

    result = time_generate(Path(args.model), args.batch, args.prompt_len, args.new, args.rounds)
    print(json.dumps(result))
    return 0


def _write_deepspeed(args: argparse.Namespace) -> int:
    default_to_cpu()
    from torch_ref.train.write_deepspeed import write_deepspeed

    return write_deepspeed(args)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line message and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="torch-ref", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("logits", help="fp32 logits of an HF model on a saved batch")
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("--batch", required=True, help=".npz with input_ids, attention_mask, positions")
    p.add_argument("--out", required=True, help=".npy file for the logits")
    p.set_defaults(run=_logits)

    p = sub.add_parser("train", help="SFT on PyTorch/DeepSpeed, the reference for jax-sft train")
    p.add_argument("config", nargs="?", help="YAML run config (omit for all defaults)")
    add_overrides(p)
    p.add_argument(
        "--deepspeed_config",
        help="take batch sizes, optimizer, schedule, clipping, precision and ZeRO stage "
        "from a DeepSpeed JSON config (read as jax-sft train reads it)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an output directory without checkpoint"
    )
    p.add_argument(
        "--resume", action="store_true", help="require a checkpoint in the output directory"
    )
    p.add_argument(
        "--attn_implementation",
        choices=("eager", "sdpa"),
        default="eager",
        help="transformers' attention: eager (the default, the parity reference) or sdpa "
        "(PyTorch's fused kernels, what a PyTorch user gets by default; the benchmark's)",
    )
    p.add_argument(
        "--probe-logits",
        metavar="OUT.npy",
        help="after training, save the exported model's fp32 logits on the probe batch "
        "(interop.probe; jax-sft parity compares them)",
    )
    add_json(p)
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "write-deepspeed", help="DeepSpeed's checkpoint of another framework's run (internal)"
    )
    p.add_argument("transfer", help="HF directory with exp_avg/exp_avg_sq.safetensors, steps.json")
    p.add_argument("dst", help="the DeepSpeed checkpoint directory to write")
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), required=True)
    add_overrides(p)
    p.set_defaults(run=_write_deepspeed)

    p = sub.add_parser("bench-generate", help="transformers generation speed (internal)")
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--prompt-len", type=int, required=True)
    p.add_argument("--new", type=int, required=True)
    p.add_argument("--rounds", type=int, default=1)
    p.set_defaults(run=_bench_generate)
    return parser


def launcher_rank(argv: list[str]) -> list[str]:
    """`argv` without the `--local_rank=N` the `deepspeed` launcher puts first, which goes
    to LOCAL_RANK (as torchrun sets it) instead."""
    out, it = [], iter(argv)
    for arg in it:
        if arg.startswith("--local_rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg == "--local_rank":
            os.environ.setdefault("LOCAL_RANK", next(it, "0"))
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    def command() -> int:
        args = build_parser().parse_args(launcher_rank(sys.argv[1:] if argv is None else argv))
        try:
            return args.run(args)
        except ModuleNotFoundError as err:
            if err.name not in TORCH_PACKAGES:
                raise
            raise BackendError(
                f"error: {err.name} is not installed; install the torch extra: "
                "pip install -e '.[torch]'"
            ) from None

    return run_command("torch-ref", command)


if __name__ == "__main__":
    sys.exit(main())
