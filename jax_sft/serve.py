"""Answering prompts with a checkpoint: load it (adapters merged once), tokenize, generate.

What `jax-sft generate`, `jax-sft chat` and `jax-sft compare-answers` share. MODEL is an
HF, Orbax or DeepSpeed directory, or a sparse / LoRA adapter, merged into its base at
load so the model runs at dense speed (deltas are never scattered per token). Prompts
are tokenized by the model's own tokenizer (the base's for an adapter). A prompt plus
the new tokens must fit the model's context (`max_position_embeddings` /
`n_positions`); nothing is cut silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flax import nnx

from interop.checkpoints.formats import adapter_base, detect_format
from interop.data.tokenizer import load_tokenizer
from interop.errors import UserError
from jax_sft.checkpoints.loading import merged_adapter, read_checkpoint
from jax_sft.generate import bucket_length, generate
from jax_sft.models import registry

ADAPTERS = ("sparse-adapter", "lora-adapter")


def read_prompts(path: Path) -> list[str]:
    """A file's prompts: one per line, JSON lines or a JSON list of objects with a
    `prompt`; UserError naming the file (and line) otherwise."""
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


@dataclass
class Answerer:
    """A loaded model and its tokenizer, ready to answer batches of prompts."""

    config: dict
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: object

    @classmethod
    def load(cls, model: Path, adapter: Path | None = None) -> Answerer:
        """`model` (any format, or an adapter) with `adapter` merged in, if given."""
        if adapter is None and detect_format(model) in ADAPTERS:
            adapter, model = model, adapter_base(model, None)
        if adapter is not None:
            config, flat = merged_adapter(adapter, model)
        else:
            _, config, flat = read_checkpoint(model)
        graphdef, params = nnx.split(registry.model_from_flat(config, flat.items()))
        return cls(config, graphdef, params, load_tokenizer(model))

    def answer(
        self, prompts: list[str], max_new_tokens: int, stop: list[str] = (), **sampling
    ) -> tuple[list[str], list[list[int]]]:
        """(texts, token ids) of the new tokens of each prompt, each cut before the first
        of the `stop` strings it produces (the ids at the token that completes it)."""
        if not prompts or any(not p for p in prompts):
            raise UserError("--prompt: an empty prompt")
        if max_new_tokens < 1:
            raise UserError(f"--max_new_tokens {max_new_tokens}: must be >= 1")
        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        longest = max(len(i) for i in ids)
        context = self.config.get("max_position_embeddings") or self.config.get("n_positions")
        need = bucket_length(longest) + max_new_tokens - 1
        if context is not None and need > context:
            raise UserError(
                f"a prompt of {longest} tokens (padded to {bucket_length(longest)}) plus "
                f"--max_new_tokens {max_new_tokens} needs {need} positions; the model's "
                f"context is {context}"
            )
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.config.get("pad_token_id")
        new = generate(
            self.graphdef,
            self.params,
            ids,
            max_new_tokens,
            eos_token_id=self.config.get("eos_token_id", tok.eos_token_id),
            pad_token_id=pad or 0,
            **sampling,
        )
        return tuple(map(list, zip(*(self._cut(t, stop) for t in new), strict=True)))

    def _cut(self, ids: list[int], stop: list[str]) -> tuple[str, list[int]]:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        found = [text.index(s) for s in stop if s in text]
        if not found:
            return text, ids
        end = min(found)
        for n in range(1, len(ids) + 1):  # the first token whose text reaches the stop
            if len(self.tokenizer.decode(ids[:n], skip_special_tokens=True)) > end:
                return text[:end], ids[:n]
        return text[:end], ids
