"""`jax-sft compare A B`: parameter and logit differences between two checkpoints.

Parameters are compared tensor by tensor in float64 (the worst tensor is named by its HF
name). Logits come from one deterministic padded probe batch: a Hugging Face directory is
run by the PyTorch `transformers` model in a `torch-ref` subprocess when torch is
installed (so a conversion is checked against the reference implementation), anything
else by our Flax model. Only real tokens are compared.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interop.arguments import add_json
from interop.errors import UserError
from interop.probe import max_abs_diff, max_abs_logit_diff, probe_batch
from interop.processes import torch_available, torch_logits
from interop.report import emit
from jax_sft.checkpoints.loading import read_checkpoint
from jax_sft.models import registry
from jax_sft.models.logits import jax_logits

ENGINES = ("auto", "jax", "torch")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="logit / parameter differences between two checkpoints")
    p.add_argument("a", help="first checkpoint (HF or Orbax directory)")
    p.add_argument("b", help="second checkpoint")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="who computes HF logits: auto = PyTorch when installed, else JAX",
    )
    p.add_argument("--seq-len", type=int, default=16, help="probe batch sequence length")
    p.add_argument(
        "--atol", type=float, default=None, help="exit 1 when max_abs_logit_diff exceeds this"
    )
    add_json(p)
    p.set_defaults(run=run)


def _engine_for(fmt: str, requested: str, path: Path) -> str:
    if requested == "torch" and fmt != "hf":
        raise UserError(f"--engine torch: {path} is a {fmt} checkpoint, not a Hugging Face one")
    if requested == "torch" and not torch_available():
        raise UserError("--engine torch needs the torch extra: pip install 'jax-sft[torch]'")
    if requested == "auto":
        return "torch" if fmt == "hf" and torch_available() else "jax"
    return requested


def param_diff(
    flat_a: dict[str, np.ndarray], flat_b: dict[str, np.ndarray], config: dict, a: Path, b: Path
) -> tuple[float, str | None]:
    """(max |a - b| over all parameters, HF name of the worst tensor or None if all equal)."""
    only = sorted(set(flat_a) ^ set(flat_b))
    if only:
        where = a if only[0] in flat_a else b
        raise UserError(f"{where}: parameter {only[0]} has no counterpart in the other checkpoint")
    table = registry.name_table(config)
    worst, worst_name = 0.0, None
    for path in sorted(flat_a):
        x, y = flat_a[path], flat_b[path]
        if x.shape != y.shape:
            raise UserError(
                f"{b}: parameter {table.to_hf_name(path)[0]} has shape {y.shape}, {a} has {x.shape}"
            )
        d = max_abs_diff(x, y)
        if d > worst:
            worst, worst_name = d, table.to_hf_name(path)[0]
    return worst, worst_name


def run(args: argparse.Namespace) -> int:
    if args.atol is not None and not args.atol >= 0:
        raise UserError(f"--atol: {args.atol} is not a tolerance (give a number >= 0)")
    a, b = Path(args.a), Path(args.b)
    fmt_a, cfg_a, flat_a = read_checkpoint(a)
    fmt_b, cfg_b, flat_b = read_checkpoint(b)
    for key in ("model_type", "vocab_size"):
        if cfg_a.get(key) != cfg_b.get(key):
            raise UserError(
                f"{b}/config.json: {key} is {cfg_b.get(key)!r}, {a} has {cfg_a.get(key)!r}"
            )
    engine_a, engine_b = _engine_for(fmt_a, args.engine, a), _engine_for(fmt_b, args.engine, b)
    p_diff, worst = param_diff(flat_a, flat_b, cfg_a, a, b)

    batch = probe_batch(cfg_a["vocab_size"], seq_len=args.seq_len)
    logits = []
    for path, engine, config, flat in ((a, engine_a, cfg_a, flat_a), (b, engine_b, cfg_b, flat_b)):
        logits.append(
            torch_logits(path, batch) if engine == "torch" else jax_logits(config, flat, batch)
        )
    l_diff = max_abs_logit_diff(logits[0], logits[1], batch["attention_mask"])
    tokens = int(batch["attention_mask"].sum())

    summary = {
        "a": str(a),
        "b": str(b),
        "format_a": fmt_a,
        "format_b": fmt_b,
        "engine_a": engine_a,
        "engine_b": engine_b,
        "max_abs_param_diff": p_diff,
        "worst_param": worst,
        "max_abs_logit_diff": l_diff,
        "tokens_compared": tokens,
    }
    lines = [
        f"A: {a} ({fmt_a}, logits by {engine_a})",
        f"B: {b} ({fmt_b}, logits by {engine_b})",
        f"max_abs_param_diff: {p_diff:.3g} "
        + (f"(worst tensor: {worst})" if worst else "(every tensor identical)"),
        f"max_abs_logit_diff: {l_diff:.3g} over {tokens} real tokens",
    ]
    failed = args.atol is not None and l_diff > args.atol
    if args.atol is not None:
        summary["atol"] = args.atol
        summary["passed"] = not failed
        lines.append(f"{'FAIL' if failed else 'ok'}: max_abs_logit_diff vs --atol {args.atol:g}")
    emit(lines, summary, args.json)
    return 1 if failed else 0
