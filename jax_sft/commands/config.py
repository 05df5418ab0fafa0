"""`jax-sft config CONFIG.yaml [--set a.b=v ...]`: validate a run config, print it resolved.

The same loader as every command that takes a config, so a typo is caught here before a
long job starts; the output (all defaults filled in) is itself a valid config file.
"""

from __future__ import annotations

import argparse
import json

from interop.arguments import add_json, add_overrides
from interop.config_files import dump_config, load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate a run config and print it with defaults filled in")
    p.add_argument("config", nargs="?", help="YAML run config (omit for all defaults)")
    add_overrides(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(json.dumps(cfg.model_dump(mode="json")) if args.json else dump_config(cfg), end="\n")
    return 0
