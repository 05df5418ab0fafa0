"""Which layers take LoRA: peft's `target_modules` rule, applied to Hugging Face names.

peft names a layer by its module name in the `transformers` model, which is its weight's
name without ".weight" (`model.layers.0.self_attn.q_proj`). A list entry matches a name
equal to it or ending in "." + entry, so "q_proj" selects every layer's q_proj and
"layers.0.self_attn.q_proj" only the first; a string is a regex the whole name must
match; "all-linear" is every linear layer except the output head. We apply the same rule
to the HF names our name table gives our kernels, so a run selects exactly the layers
peft selects when it loads the exported adapter.

Only linear layers are candidates: our kernels, stored [in, *out] (trailing dims merged
for GPT-2's fused q/k/v). HF stores them [out, in] (`nn.Linear`, the table transposes) or
[in, out] (GPT-2's `Conv1D`, which peft handles with `fan_in_fan_out`). Two differences
from peft, both on the side of selecting only linear layers: peft refuses a target that
also matches another module (an activation, a norm; easy with a regex), where here that
module is simply no candidate, which DeepSpeed-Chat's "name contains" rule needs; and a
tied output head has no kernel of its own here, so it is never a target. The adapter file
names exactly the adapted layers (`peft_target_modules`), so peft loads what we trained.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from interop.errors import UserError
from jax_sft.models.hf_names import NameTable

ALL_LINEAR = "all-linear"
OUTPUT_HEAD = "lm_head"


@dataclass(frozen=True)
class Target:
    """One adapted layer: its HF module name and the shape of its product B @ A."""

    module: str
    in_features: int
    out_features: int
    fan_in_fan_out: bool  # HF stores the weight [in, out] (Conv1D)


def matches(module: str, target_modules: list[str] | str) -> bool:
    """peft's rule: list entries match by equality or "." suffix, a string by full regex."""
    if isinstance(target_modules, str):
        if target_modules.lower() == ALL_LINEAR:
            return module.rsplit(".", 1)[-1] != OUTPUT_HEAD
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith("." + t) for t in target_modules)


def linear_layers(shapes: Mapping[str, tuple[int, ...]], table: NameTable) -> dict[str, Target]:
    """{our kernel path: Target} for every linear layer of the model."""
    layers = {}
    for path, shape in shapes.items():
        if not path.endswith(".kernel"):
            continue
        name, transform = table.to_hf_name(path)
        fan_in_fan_out = transform.kind != "transpose"
        in_features, out_features = shape[0], math.prod(shape[1:])
        expected = (in_features, out_features) if fan_in_fan_out else (out_features, in_features)
        if not name.endswith(".weight") or transform.hf_shape(shape) != expected:
            raise UserError(f"{path}: not a linear layer this LoRA understands ({name})")
        module = name[: -len(".weight")]
        layers[path] = Target(module, in_features, out_features, fan_in_fan_out)
    return layers


def _leaf_names(modules: Iterable[str]) -> list[str]:
    return sorted({m.rsplit(".", 1)[-1] for m in modules})


def lora_targets(
    shapes: Mapping[str, tuple[int, ...]], table: NameTable, target_modules: list[str] | str
) -> dict[str, Target]:
    """{our kernel path: Target} selected by `lora.target_modules`; a UserError listing the
    linear layers when nothing matches."""
    layers = linear_layers(shapes, table)
    chosen = {p: t for p, t in layers.items() if matches(t.module, target_modules)}
    if not chosen:
        example = next(iter(layers.values())).module if layers else "none"
        raise UserError(
            f"lora.target_modules: {target_modules!r} matches no linear layer (linear layers:"
            f" {', '.join(_leaf_names(t.module for t in layers.values()))}; full names look"
            f" like {example})"
        )
    return chosen


def peft_target_modules(
    chosen: Iterable[str], shapes: Mapping[str, tuple[int, ...]], table: NameTable
) -> list[str]:
    """`target_modules` for the adapter file that selects exactly the kernels `chosen`:
    their short names ("q_proj") when those select nothing else, else full module names."""
    layers = linear_layers(shapes, table)
    modules = sorted(layers[p].module for p in chosen)
    short = _leaf_names(modules)
    selected = sorted(t.module for t in layers.values() if matches(t.module, short))
    return short if selected == modules else modules
