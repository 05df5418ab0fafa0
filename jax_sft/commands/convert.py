"""`jax-sft convert SRC DST --to {hf,orbax,sparse,deepspeed}`: checkpoint conversion,
source detected.

A DeepSpeed source streams: one tensor is read, converted and written at a time. `sparse`
is HF with pruned tensors as bitmask + values (`interop.checkpoints.sparse_bitmask`); a
conversion to or from it also reports the bytes stored.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from interop.arguments import add_json, add_overrides
from interop.checkpoints.formats import detect_format
from interop.checkpoints.sparse_bitmask import stored_bytes
from interop.config_files import load_config
from interop.errors import UserError
from interop.outputs import output_dir
from interop.report import emit
from jax_sft.checkpoints.carried_state import write_with_optimizer
from jax_sft.checkpoints.deepspeed_convert import deepspeed_to_hf, deepspeed_to_ours, open_deepspeed
from jax_sft.checkpoints.deepspeed_export import (
    is_training_checkpoint,
    run_torch_writer,
    write_transfer,
)
from jax_sft.checkpoints.loading import (
    FORMATS,
    merged_adapter,
    read_checkpoint,
    write_checkpoint,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", help="source checkpoint directory (format detected)")
    p.add_argument("dst", help="destination directory (must not exist unless --overwrite)")
    p.add_argument(
        "--to", required=True, choices=(*FORMATS, "deepspeed"), help="destination format"
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--base",
        help="for an adapter SRC (sparse or LoRA): the base to merge into; for a DeepSpeed "
        "SRC: the HF model it was trained from (its config, tokenizer, frozen weights)",
    )
    p.add_argument("--tag", help="for a DeepSpeed SRC: the checkpoint tag (default: latest)")
    p.add_argument(
        "--with-optimizer",
        action="store_true",
        help="DeepSpeed SRC --to orbax: carry the Adam state and steps along, for "
        "train.resume_from",
    )
    p.add_argument("--max-shard-size", default="5GB", help="HF shard size (e.g. 5GB, 500MB)")
    p.add_argument(
        "--config",
        help="--to deepspeed: the YAML config of the run SRC (a jax-sft training checkpoint, "
        "OUT/checkpoints/N) belongs to",
    )
    p.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2, 3),
        help="--to deepspeed: the ZeRO stage (default: the config's parallel.zero_stage)",
    )
    p.add_argument("--world-size", type=int, default=1, help="--to deepspeed: data-parallel ranks")
    add_overrides(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if args.to == "deepspeed":
        return _to_deepspeed(src, dst, args)
    fmt = detect_format(src)
    if args.with_optimizer and (fmt != "deepspeed" or args.to != "orbax"):
        raise UserError("--with-optimizer: only a DeepSpeed SRC converted --to orbax carries it")
    is_adapter = fmt.endswith("adapter")
    if is_adapter and not args.base:
        raise UserError(f"--base: {src} is an adapter; name the base model to merge it into")
    with output_dir(dst, args.overwrite) as tmp:
        if fmt == "deepspeed":
            tensors, nbytes = _from_deepspeed(src, tmp, args)
        else:
            if is_adapter:
                tokenizer_src = Path(args.base)
                config, flat = merged_adapter(src, tokenizer_src)
            else:
                fmt, config, flat = read_checkpoint(src)
                tokenizer_src = src
            write_checkpoint(
                tmp,
                args.to,
                config,
                flat,
                tokenizer_src=tokenizer_src,
                max_shard_size=args.max_shard_size,
            )
            tensors, nbytes = len(flat), sum(a.nbytes for a in flat.values())
    summary = {
        "src": str(src),
        "src_format": fmt,
        "dst": str(dst),
        "dst_format": args.to,
        "tensors": tensors,
        "bytes": nbytes,
    }
    line = f"converted {src} ({fmt}) -> {dst} ({args.to}): {tensors} tensors, {nbytes:,} bytes"
    if "sparse" in (fmt, args.to):
        stored = stored_bytes(dst if args.to == "sparse" else src)
        summary["compressed_bytes"] = stored
        line += f" dense, {stored:,} bytes compressed ({stored / max(nbytes, 1):.1%})"
    emit([line], summary, args.json)
    return 0


def _from_deepspeed(src: Path, tmp: Path, args: argparse.Namespace) -> tuple[int, int]:
    """Convert a DeepSpeed checkpoint into `tmp`, saying which weights it used; (tensors,
    bytes). To HF it streams; Orbax saves one tree, so that path holds the model."""
    opened = open_deepspeed(src, args.base, args.tag)
    for note in opened.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.to == "hf":
        return len(opened.layout), deepspeed_to_hf(opened, tmp, args.max_shard_size)
    flat = dict(deepspeed_to_ours(opened))
    if args.with_optimizer:
        write_with_optimizer(opened, tmp, flat)
    else:
        write_checkpoint(tmp, args.to, opened.config, flat, tokenizer_src=opened.config_dir)
    return len(flat), sum(a.nbytes for a in flat.values())


def _to_deepspeed(src: Path, dst: Path, args: argparse.Namespace) -> int:
    """A jax-sft training checkpoint as DeepSpeed's, written by DeepSpeed itself."""
    if not is_training_checkpoint(src):
        raise UserError(
            f"{src}: --to deepspeed takes a jax-sft training checkpoint (OUT/checkpoints/N)"
        )
    if not args.config:
        raise UserError("--config: name the YAML config of the run the checkpoint belongs to")
    if args.world_size < 1:
        raise UserError(f"--world-size: {args.world_size} is not a number of ranks")
    with output_dir(dst, args.overwrite) as tmp:
        transfer = tmp / ".transfer"
        transfer.mkdir()
        write_transfer(src, args.base, transfer)
        config = Path(args.config)
        stage = args.zero_stage
        if stage is None:
            stage = load_config(config, args.overrides).parallel.zero_stage
        run_torch_writer(transfer, tmp, config, args.overrides, args.world_size, stage)
        shutil.rmtree(transfer)
    line = (
        f"converted {src} (jax-sft checkpoint) -> {dst} (deepspeed, ZeRO-{stage}, "
        f"{args.world_size} rank(s))"
    )
    summary = {
        "src": str(src),
        "dst": str(dst),
        "dst_format": "deepspeed",
        "zero_stage": stage,
        "world_size": args.world_size,
    }
    emit([line], summary, args.json)
    return 0
