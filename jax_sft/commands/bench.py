"""`jax-sft bench CONFIG.yaml [--memory] [--steps N] [--sparse]`: throughput, MFU, XLA memory.

Throughput times `--steps` train steps after one warm-up (compile) step, synchronising
only at the end; tokens/s counts scored tokens and MFU divides the achieved training
FLOPs (`jax_sft.models.flops`, the one formula) by the device's peak for the compute
dtype, where the peak is known. `--memory` compiles the train step for the config's mesh
and ZeRO stage without running it and reports `compiled.memory_analysis()` per device:
exact on the CPU and independent of machine load, so placements compare exactly.
`--sparse` runs the sparse fine-tuning quality study instead (`sparse_study`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from interop.arguments import add_json, add_overrides
from interop.config import load_config
from interop.report import emit
from jax_sft.models.flops import train_flops_per_token
from jax_sft.train.run import initialize

MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)
# Dense peak FLOP/s per device by (device kind prefix, dtype); MFU is reported where known.
PEAK_FLOPS = {
    ("NVIDIA H200", "bfloat16"): 989e12,
    ("NVIDIA H100", "bfloat16"): 989e12,
    ("NVIDIA A100", "bfloat16"): 312e12,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput, MFU and per-device XLA memory of a run")
    p.add_argument("config", nargs="?", help="YAML run config")
    add_overrides(p)
    p.add_argument("--memory", action="store_true", help="only report XLA's memory_analysis()")
    p.add_argument("--steps", type=int, default=10, help="timed train steps (after a warm-up)")
    p.add_argument(
        "--sparse",
        action="store_true",
        help="the sparse fine-tuning quality study (dense, LoRA, five sparse methods)",
    )
    p.add_argument("--sparse-lr", type=float, default=1e-2, help="study: LR of non-dense runs")
    p.add_argument("--docs", default="docs", help="study: where the table and PNG go")
    p.add_argument("--work", default="out/sparse-study", help="study: the runs' directories")
    add_json(p)
    p.set_defaults(run=run)


def train_step_memory(engine) -> dict[str, int]:
    """Per-device bytes of the engine's compiled train step."""
    batch = jax.eval_shape(lambda: engine.global_batch(0))
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=engine.placement.batch)
        for k, v in batch.items()
    }
    compiled = engine._train_step.lower(engine.state, batch, np.float32(0.0)).compile()
    analysis = compiled.memory_analysis()
    return {field: int(getattr(analysis, field)) for field in MEMORY_FIELDS}


def peak_flops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for (k, d), v in PEAK_FLOPS.items() if kind.startswith(k) and d == dtype), None)


def throughput(engine, steps: int) -> dict:
    """Tokens/s and MFU over `steps` timed steps (one warm-up step first)."""
    jax.block_until_ready(engine.train_batch())
    batches = [engine.global_batch(engine.step + i) for i in range(steps)]
    started = time.perf_counter()
    metrics = [engine.train_batch(b) for b in batches]
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - started
    tokens = sum(int(m["tokens"]) for m in metrics)
    positions = sum(int(b["attention_mask"].size) for b in batches)
    seq = engine.cfg.data.max_seq_len
    flops = train_flops_per_token(engine.hf_config, seq) * positions / elapsed
    peak = peak_flops(engine.cfg.model.dtype)
    n = len(engine.mesh.devices.flat)
    return {
        "steps": steps,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "model_flops_per_s": flops,
        "mfu": flops / (peak * n) if peak else None,
        "device_kind": jax.devices()[0].device_kind,
        "devices": n,
    }


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.sparse:
        return run_study(args, cfg)
    engine = initialize(cfg)
    summary = {"mesh": dict(engine.mesh.shape), "zero_stage": cfg.parallel.zero_stage}
    summary.update(train_step_memory(engine))
    lines = [f"mesh {summary['mesh']}, ZeRO-{cfg.parallel.zero_stage}; per device:"]
    lines += [f"  {k}: {summary[k]:,}" for k in MEMORY_FIELDS]
    if not args.memory:
        result = throughput(engine, args.steps)
        summary.update(result)
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (unknown peak)"
        lines.append(
            f"{result['tokens_per_s']:,.0f} tokens/s over {args.steps} steps on "
            f"{result['devices']} x {result['device_kind']}; MFU {mfu}"
        )
    emit(lines, summary, args.json)
    return 0


def run_study(args: argparse.Namespace, cfg) -> int:
    from jax_sft.commands import sparse_study

    rows = sparse_study.study(cfg, Path(args.work), args.sparse_lr)
    command = "jax-sft bench --sparse" + (f" {args.config}" if args.config else "")
    sparse_study.write_docs(rows, Path(args.docs), command)
    lines = [sparse_study.table(rows, rows[0]["trainable"])]
    emit(lines, {"runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}, args.json)
    return 0
