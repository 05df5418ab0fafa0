"""The model a pruning run ships: dense with exact zeros, or physically smaller.

An unstructured cut only zeroes entries, so the exported model keeps every shape and
`masked` writes the zeros in. A structured cut removes whole FFN neurons (`rows`) or
whole attention heads / KV groups (`heads`); a removed item then contributes exactly
nothing (its output-projection entries are zero), so `shrink` can delete its indices
from every tensor of the block and lower the size in `config.json`. The
smaller model computes the same logits as the dense one with zeros, up to the order of
floating-point sums.

A shrink is only written where a standard `config.json` can say it:

- every layer of the model must keep the same number of neurons (one
  `intermediate_size` / `ffn_dim` / `n_inner`) or of heads;
- heads shrink only in the Llama family (Llama, Qwen2, Mistral), whose code reads
  `head_dim`, `num_attention_heads` and `num_key_value_heads` independently of the
  hidden size. OPT and GPT-2 derive the head width from `hidden_size / heads` and size
  the output projection's input as the hidden size, so fewer heads would change the
  width of every head.

Anything else stays dense with its exact zeros, and a note says why; the written config
is always one `transformers` loads. `pruning_report` is what `pruning.json` records:
the rules, per-tensor sparsity, the kept items of each structure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from interop.pruning.masks import Pruner, sparsity_report
from interop.pruning.plan import Unit
from interop.pruning.structure import Block, blocks

LLAMA_FAMILY = ("llama", "qwen2", "mistral")
FFN_FIELD = {
    "llama": "intermediate_size",
    "qwen2": "intermediate_size",
    "mistral": "intermediate_size",
    "opt": "ffn_dim",
    "gpt2": "n_inner",
}
REPORT = "pruning.json"


def masked(
    tensors: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The tensors with every masked-out entry exactly zero; untargeted ones untouched."""
    out = dict(tensors)
    for name, mask in masks.items():
        value = np.asarray(tensors[name])
        out[name] = np.where(mask, value, np.zeros((), value.dtype))
    return out


def kept_items(unit: Unit, pruner: Pruner, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """The unit's items that stay: those the pruner keeps, and any item of which some
    member still has an entry (another rule may have left one), so that an item is only
    ever removed when every one of its entries is zero."""
    keep = np.array(pruner.alive(unit, masks), bool)
    for member in unit.members:
        mask = np.asarray(masks[member.name], np.float64)
        keep |= member.item_sums(mask, unit.items) > 0
    return keep


def structured_keeps(pruner: Pruner, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{block module: kept-item flags} for every structured unit."""
    return {u.key: kept_items(u, pruner, masks) for u in pruner.units if u.structured}


def shrink(
    hf_config: Mapping,
    tensors: Mapping[str, np.ndarray],
    pruner: Pruner,
    masks: Mapping[str, np.ndarray],
) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(config, tensors, notes) of the smallest standard model equal to the masked one.

    Every tensor is masked first; the blocks of a kind (rows, heads) are then cut where
    the module docstring's conditions hold, and each kind that cannot be is left dense
    with a note saying why."""
    config = dict(hf_config)
    out = masked(tensors, masks)
    shapes = {name: np.shape(value) for name, value in tensors.items()}
    keeps = structured_keeps(pruner, masks)
    notes = []
    for kind in ("rows", "heads"):
        found = [b for b in blocks(hf_config, shapes) if b.kind == kind]
        flags = {b.module: keeps.get(b.module, np.ones(b.items, bool)) for b in found}
        if all(f.all() for f in flags.values()):
            continue
        reason = _why_not(kind, config, flags)
        if reason:
            notes.append(f"{kind}: {reason}; these weights stay dense with exact zeros")
            continue
        for block in found:
            for member in block.members:
                out[member.name] = member.cut(out[member.name], flags[block.module])
        config.update(_sizes(kind, config, found[0], flags[found[0].module]))
    return config, out, notes


def _why_not(kind: str, config: Mapping, flags: Mapping[str, np.ndarray]) -> str | None:
    """Why the cut blocks of one kind cannot shrink, or None when they can."""
    family = config["model_type"]
    if kind == "heads" and family not in LLAMA_FAMILY:
        return (
            f"{family} derives the head width from hidden_size / heads and fixes the "
            "output projection's input at hidden_size, so a config with fewer heads "
            "would change every head"
        )
    counts = {module: int(f.sum()) for module, f in flags.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{m} {n}" for m, n in counts.items())
        field = FFN_FIELD[family] if kind == "rows" else "num_key_value_heads"
        return f"layers keep different counts ({listed}), but config.json has one {field}"
    return None


def _sizes(kind: str, config: Mapping, block: Block, keep: np.ndarray) -> dict:
    """The config fields that describe the cut blocks."""
    kept = int(keep.sum())
    if kind == "rows":
        return {FFN_FIELD[config["model_type"]]: kept}
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {
        "num_attention_heads": kept * block.heads_per_item,
        "num_key_value_heads": kept,
        "head_dim": head_dim,
    }


def pruning_report(
    pruner: Pruner,
    masks: Mapping[str, np.ndarray],
    *,
    shrunk: bool,
    notes: Sequence[str] = (),
    extra: Mapping | None = None,
) -> dict:
    """What `pruning.json` holds: the rules, whether the model was shrunk and why not
    (`notes`), `extra` fields, per-tensor size / zeros / sparsity, and each structured
    block's kept item indices (neurons, or KV groups for heads)."""
    structures = {}
    for unit in pruner.units:
        if unit.structured:
            structures[unit.key] = {
                "pattern": pruner.cfg.rules[unit.rule].pattern,
                "items": unit.items,
                "heads_per_item": unit.heads_per_item,
                "kept": np.flatnonzero(kept_items(unit, pruner, masks)).tolist(),
            }
    return {
        "rules": [rule.model_dump(mode="json") for rule in pruner.cfg.rules],
        "seed": pruner.cfg.seed,
        "shrunk": shrunk,
        "notes": list(notes),
        **dict(extra or {}),
        "tensors": sparsity_report(masks),
        "structures": structures,
    }
