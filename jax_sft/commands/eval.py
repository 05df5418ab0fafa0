"""`jax-sft eval CONFIG.yaml --checkpoint PATH`: eval loss and perplexity of a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from interop.arguments import add_json, add_overrides
from interop.config_files import load_config
from interop.errors import UserError
from interop.report import emit
from jax_sft.train.run import make_engine


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="eval loss and perplexity on the config's eval set")
    p.add_argument("config", help="YAML run config (its data section names the eval set)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="HF or Orbax model directory, or a run's output directory",
    )
    add_overrides(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    path = Path(args.checkpoint)
    model = path / "hf" if (path / "hf" / "config.json").is_file() else path
    result = make_engine(cfg, model=model).evaluate()
    if not result:
        raise UserError(f"{args.config}: no eval set (set data.eval_sources or data.eval_fraction)")
    lines = [f"eval loss {result['eval_loss']:.4f}, ppl {result['eval_ppl']:.3f} ({model})"]
    emit(lines, {"checkpoint": str(model), **result}, args.json)
    return 0
