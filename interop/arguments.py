"""Flags several commands share, defined once: `--set a.b=value`, `--json`, sampling."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="A.B=VALUE",
        help="override one config field (repeatable; the value is read as YAML)",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last stdout line"
    )


def add_sampling(p: argparse.ArgumentParser) -> None:
    """The flags of how new tokens are chosen."""
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=int)
    p.add_argument("--top_p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--stop", action="append", default=[], help="end an answer at this text (repeatable)"
    )


def sampling(args: argparse.Namespace) -> dict:
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
