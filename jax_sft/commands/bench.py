"""`jax-sft bench [CONFIG] [--memory | --sparse | --prune | --generate | --compare | --data |
--compile]`.

Throughput and MFU come from `jax_sft.bench.throughput`. `--memory` compiles the train
step for the config's mesh and ZeRO stage without running it and reports
`compiled.memory_analysis()` per device: exact on the CPU and independent of machine
load, so placements compare exactly. `--sparse` runs the sparse fine-tuning quality
study instead (`jax_sft.bench.sparse_study`), `--prune` the pruning study
(`jax_sft.bench.prune_study`), `--compare` both backends' training speed
(`jax_sft.bench.train_speed`), `--data` what data costs at scale
(`jax_sft.bench.data_scale`), `--compile` the train step's compile time with layers
looped and scanned (`jax_sft.bench.compile_time`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax

from interop.arguments import add_json, add_overrides
from interop.config_files import load_config
from interop.errors import UserError
from interop.report import emit
from jax_sft.bench import (
    compile_time,
    data_scale,
    generation,
    prune_study,
    pruned_generation,
    sparse_study,
    train_speed,
)
from jax_sft.bench.throughput import throughput
from jax_sft.train.engine import MEMORY_FIELDS
from jax_sft.train.run import make_engine


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
    p.add_argument(
        "--prune",
        action="store_true",
        help="the pruning study (magnitude, Wanda, SparseGPT, rows; with and without distillation)",
    )
    p.add_argument(
        "--generate",
        action="store_true",
        help="generation tokens/s, ours against transformers (docs/benchmarks.md)",
    )
    p.add_argument(
        "--pruned",
        action="store_true",
        help="generate: the rows- and heads-pruned exports beside dense (docs/pruning.md)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="training speed, jax-sft train beside torch-ref train (DeepSpeed, SDPA), one run",
    )
    p.add_argument(
        "--data",
        action="store_true",
        help="data at scale: 2-step runs on 1,000 and 1,000,000 rows, tokenizing and cached",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="train-step compile time, decoder layers looped and scanned (model.scan_layers)",
    )
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=list(compile_time.DEPTHS),
        help="compile: the depths to build",
    )
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="MODEL:SEQ",
        help="compare: the cases to run (default: llama-10m and llama-50m at 256 and 512)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="generate, compare, compile: alternating rounds"
    )
    p.add_argument("--sparse-lr", type=float, default=1e-2, help="study: LR of non-dense runs")
    p.add_argument("--docs", default="docs", help="study: where the table and PNG go")
    p.add_argument(
        "--work", help="study: the runs' directories (default out/sparse-study, out/pruning-study)"
    )
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.generate:
        return run_generation(args)
    if args.compare:
        return run_compare(args)
    if args.data:
        return run_data_scale(args)
    if args.compile:
        return run_compile_time(args)
    cfg = load_config(args.config, args.overrides)
    if args.sparse:
        return run_study(args, cfg)
    if args.prune:
        return run_prune_study(args, cfg)
    engine = make_engine(cfg)
    summary = {"mesh": dict(engine.mesh.shape), "zero_stage": cfg.parallel.zero_stage}
    summary.update(engine.train_step_memory())
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


def run_compare(args: argparse.Namespace) -> int:
    """Both backends' training speed into docs/benchmarks.md, a PNG and a JSON file."""
    cases = train_speed.CASES
    if args.cases:
        cases = tuple(train_speed.parse_case(c) for c in args.cases)
    work = Path(args.work or "out/bench-compare")
    summary = train_speed.benchmark(work, args.rounds, args.steps, cases)
    docs = Path(args.docs)
    text = train_speed.table(summary)
    what = (
        f"batch {train_speed.BATCH}, fp32, {args.steps} timed steps after {train_speed.WARM}, "
        f"medians of {args.rounds} alternating rounds; XLA fp32 matmul peak "
        f"{summary['peak_flops'] / 1e9:,.0f} GFLOP/s (median of the rounds)"
    )
    command = "bench --compare"
    generation.write_docs(
        docs / "benchmarks.md", f"`jax-sft {command}` ({what}):\n\n" + text, command=command
    )
    train_speed.write_figures(summary, docs)
    emit([text, f"wrote {docs / 'benchmarks.md'}"], summary, args.json)
    return 0


def run_data_scale(args: argparse.Namespace) -> int:
    """The data-at-scale benchmark into docs/benchmarks.md."""
    summary = data_scale.benchmark(Path(args.work or "out/bench-data"))
    text = data_scale.table(summary)
    what = (
        f"prompt/chosen rows at max_seq_len {summary['max_seq_len']}, the demo's tiny Llama, "
        "2 steps; each size run twice from an empty cache: tokenizing, then mapped"
    )
    docs = Path(args.docs) / "benchmarks.md"
    generation.write_docs(docs, f"`jax-sft bench --data` ({what}):\n\n" + text, "bench --data")
    emit([text, f"wrote {docs}"], summary, args.json)
    return 0


def run_generation(args: argparse.Namespace) -> int:
    """The generation benchmark (`--pruned`: of the shrunk exports) into its docs page."""
    device = jax.devices()[0].device_kind
    shape = f"prompts of {generation.PROMPT} tokens, {generation.NEW} new tokens, greedy"
    if args.pruned:
        rows = pruned_generation.benchmark(args.rounds)
        text, page, command = (
            pruned_generation.table(rows),
            "pruning.md",
            "bench --generate --pruned",
        )
        what = (
            f"the ~30M-parameter Llama of the generation benchmark and its shrunk cuts, fp32 "
            f"on {device}; batch {rows[0]['batch']}, {shape}; medians of {args.rounds} "
            "alternating rounds"
        )
    else:
        rows = generation.benchmark(args.rounds)
        text, page, command = generation.table(rows), "benchmarks.md", "bench --generate"
        what = (
            f"a ~30M-parameter Llama, random weights, fp32 on {device}; {shape}; medians of "
            f"{args.rounds} alternating rounds; `transformers` in its own process"
        )
    docs = Path(args.docs) / page
    generation.write_docs(docs, f"`jax-sft {command}` ({what}):\n\n" + text, command=command)
    emit([text, f"wrote {docs}"], {"rows": rows}, args.json)
    return 0


def run_prune_study(args: argparse.Namespace, cfg) -> int:
    rows = prune_study.study(cfg, Path(args.work or "out/pruning-study"))
    command = "jax-sft bench --prune" + (f" {args.config}" if args.config else "")
    base = f"{cfg.model.tiny or cfg.model.path} ({rows[0]['hf_bytes']:,} bytes)"
    prune_study.write_docs(rows, Path(args.docs), command, base)
    emit([prune_study.table(rows)], {"runs": rows}, args.json)
    return 0


def run_study(args: argparse.Namespace, cfg) -> int:
    rows = sparse_study.study(cfg, Path(args.work or "out/sparse-study"), args.sparse_lr)
    command = "jax-sft bench --sparse" + (f" {args.config}" if args.config else "")
    sparse_study.write_docs(rows, Path(args.docs), command)
    lines = [sparse_study.table(rows, rows[0]["trainable"])]
    emit(lines, {"runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}, args.json)
    return 0


def run_compile_time(args: argparse.Namespace) -> int:
    """Compile time of the train step, layers looped and scanned, into docs/benchmarks.md."""
    depths = tuple(args.layers)
    if min(depths) < 1:
        raise UserError(f"--layers: depths must be at least 1, got {list(depths)}")
    c = compile_time
    summary = c.benchmark(c.MODEL, depths, args.rounds, c.BATCH, c.SEQ)
    text = c.table(summary)
    what = (
        f"the dense train step of `{c.MODEL}` at the given depth, batch {c.BATCH} x {c.SEQ}, "
        f"fp32, one device; `lower` (trace) and XLA compile seconds, medians of "
        f"{args.rounds} alternating rounds"
    )
    docs = Path(args.docs) / "benchmarks.md"
    generation.write_docs(
        docs, f"`jax-sft bench --compile` ({what}):\n\n" + text, "bench --compile"
    )
    emit([text, f"wrote {docs}"], summary, args.json)
    return 0
