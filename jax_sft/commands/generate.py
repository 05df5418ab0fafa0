"""`jax-sft generate MODEL --prompt TEXT | --prompts FILE`: answers from a checkpoint.

MODEL is an HF, Orbax or DeepSpeed directory, or a sparse / LoRA adapter; `--adapter
DIR` names an adapter for the MODEL base (merged once, at load: `jax_sft.serve`).
Prompts are generated in one batch (`jax_sft.generate`), greedy unless `--temperature`
is given. `--json` ends with `{"completions": [...], "token_ids": [[...], ...]}`, new
tokens only. A prompts FILE holds one prompt per line, JSON lines or a JSON list of
objects with a `prompt` field.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interop.arguments import add_json, add_sampling, sampling
from interop.errors import UserError
from interop.report import emit
from jax_sft.serve import Answerer, read_prompts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with a model (KV-cache decoding)")
    p.add_argument("model", help="HF, Orbax or DeepSpeed directory, or an adapter")
    p.add_argument("--adapter", help="a sparse or LoRA adapter merged into MODEL at load")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a file of prompts: lines, JSON lines or a JSON list")
    add_sampling(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.prompt) == bool(args.prompts):
        raise UserError("give --prompt TEXT (repeatable) or --prompts FILE, not both or neither")
    prompts = args.prompt or read_prompts(Path(args.prompts))
    answerer = Answerer.load(Path(args.model), args.adapter and Path(args.adapter))
    texts, ids = answerer.answer(prompts, args.max_new_tokens, **sampling(args))
    lines = [f"[{i}] {p!r} -> {t!r}" for i, (p, t) in enumerate(zip(prompts, texts, strict=True))]
    emit(lines, {"completions": texts, "token_ids": ids}, args.json)
    return 0
