"""`jax-sft generate MODEL --prompt TEXT | --prompts FILE`: answers from a checkpoint.

MODEL is an HF, Orbax or DeepSpeed directory, or a sparse / LoRA adapter (merged into
its base once, at load: the model then runs at dense speed, never scattering deltas per
token); `--adapter DIR` names an adapter for the MODEL base. Prompts are tokenized by the
model's own tokenizer (the base's for an adapter) and generated in one batch
(`jax_sft.generate`); greedy unless `--temperature` is given. `--json` ends with
`{"completions": [...], "token_ids": [[...], ...]}`, new tokens only.

A prompts FILE holds one prompt per line, or JSON lines / a JSON list of objects with a
`prompt` field. A prompt plus `--max_new_tokens` must fit the model's context
(`max_position_embeddings` / `n_positions`); nothing is cut silently.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flax import nnx

from interop.arguments import add_json
from interop.checkpoints.formats import adapter_base, detect_format
from interop.data.tokenizer import load_tokenizer
from interop.errors import UserError
from interop.report import emit
from jax_sft.checkpoints.loading import merged_adapter, read_checkpoint
from jax_sft.generate import bucket_length, generate
from jax_sft.models import registry

ADAPTERS = ("sparse-adapter", "lora-adapter")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with a model (KV-cache decoding)")
    p.add_argument("model", help="HF, Orbax or DeepSpeed directory, or an adapter")
    p.add_argument("--adapter", help="a sparse or LoRA adapter merged into MODEL at load")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a file of prompts: lines, JSON lines or a JSON list")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=int)
    p.add_argument("--top_p", type=float)
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(run=run)


def read_prompts(path: Path) -> list[str]:
    """The prompts of a file; UserError naming the file (and line) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    stripped = text.strip()
    if not stripped:
        raise UserError(f"{path}: no prompts in the file")
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        return [_prompt_of(row, path, i + 1) for i, row in enumerate(rows)]
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                prompts.append(_prompt_of(json.loads(line), path, number))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number}: invalid JSON ({exc.msg})") from None
        else:
            prompts.append(line)
    return prompts


def _prompt_of(row: object, path: Path, number: int) -> str:
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise UserError(f"{path}: line {number}: expected an object with a non-empty 'prompt'")
    return row["prompt"]


def load_model(model: Path, adapter: Path | None) -> tuple[dict, dict, Path]:
    """(HF config, flat state, tokenizer directory), any adapter merged in."""
    if adapter is None and detect_format(model) in ADAPTERS:
        adapter, model = model, adapter_base(model, None)
    if adapter is not None:
        config, flat = merged_adapter(adapter, model)
        return config, flat, model
    _, config, flat = read_checkpoint(model)
    return config, flat, model


def context_of(config: dict) -> int | None:
    return config.get("max_position_embeddings") or config.get("n_positions")


def run(args: argparse.Namespace) -> int:
    if bool(args.prompt) == bool(args.prompts):
        raise UserError("give --prompt TEXT (repeatable) or --prompts FILE, not both or neither")
    prompts = args.prompt or read_prompts(Path(args.prompts))
    if any(not p for p in prompts):
        raise UserError("--prompt: an empty prompt")
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: must be >= 1")
    config, flat, tok_dir = load_model(Path(args.model), args.adapter and Path(args.adapter))
    tokenizer = load_tokenizer(tok_dir)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    longest = max(len(i) for i in ids)
    context = context_of(config)
    need = bucket_length(longest) + args.max_new_tokens - 1
    if context is not None and need > context:
        raise UserError(
            f"a prompt of {longest} tokens (padded to {bucket_length(longest)}) plus "
            f"--max_new_tokens {args.max_new_tokens} needs {need} positions; the model's "
            f"context is {context}"
        )
    graphdef, params = nnx.split(registry.model_from_flat(config, flat.items()))
    eos = config.get("eos_token_id", tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (config.get("pad_token_id") or 0)
    new = generate(
        graphdef,
        params,
        ids,
        args.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in new]
    lines = [f"[{i}] {p!r} -> {t!r}" for i, (p, t) in enumerate(zip(prompts, texts, strict=True))]
    emit(lines, {"completions": texts, "token_ids": new}, args.json)
    return 0
