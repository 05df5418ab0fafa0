"""Our LoRA factors <-> peft adapter files (`interop.lora_format`), in one call each way.

Our `a` [in, r] and `b` [r, out] are peft's lora_A.weight and lora_B.weight transposed,
for `nn.Linear` and GPT-2's `Conv1D` alike (peft keeps A [r, in], B [out, r] for both).
The file's `target_modules` selects exactly the exported layers under peft's rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from interop.adapter_config import LoraConfig
from interop.errors import UserError
from interop.lora_format import adapter_config, read_adapter, write_adapter
from jax_sft.lora.params import LoraTree
from jax_sft.lora.targets import linear_layers, peft_target_modules
from jax_sft.models.hf_names import NameTable

Shapes = Mapping[str, tuple[int, ...]]


def export_peft(
    dst: Path,
    lora: Mapping[str, Mapping],
    table: NameTable,
    shapes: Shapes,
    cfg: LoraConfig,
    base_model: str | None = None,
) -> None:
    """Write the factors {kernel path: {"a", "b"}} (host or device arrays) as a peft
    adapter into the existing directory `dst`; `shapes` are the model's parameter shapes."""
    layers = linear_layers(shapes, table)
    factors = {
        layers[p].module: (np.asarray(f["a"]).T, np.asarray(f["b"]).T) for p, f in lora.items()
    }
    config = adapter_config(
        r=cfg.rank,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        target_modules=peft_target_modules(lora, shapes, table),
        fan_in_fan_out=any(layers[p].fan_in_fan_out for p in lora),
        base_model=base_model,
    )
    write_adapter(dst, factors, config)


def import_peft(path: Path, table: NameTable, shapes: Shapes) -> tuple[dict, LoraTree]:
    """(adapter config, {kernel path: {"a", "b"}} as fp32 host arrays) of a peft adapter,
    checked against the model's parameter shapes."""
    config, factors = read_adapter(path)
    by_module = {t.module: (p, t) for p, t in linear_layers(shapes, table).items()}
    lora = {}
    for module, (a, b) in factors.items():
        if module not in by_module:
            raise UserError(f"{path}: LoRA module {module} is not a linear layer of this model")
        p, t = by_module[module]
        r = config["r"]
        if a.shape != (r, t.in_features) or b.shape != (t.out_features, r):
            raise UserError(
                f"{path}: {module} has A {a.shape} and B {b.shape}, expected"
                f" {(r, t.in_features)} and {(t.out_features, r)}"
            )
        lora[p] = {
            "a": np.ascontiguousarray(a.T, np.float32),
            "b": np.ascontiguousarray(b.T, np.float32),
        }
    return config, lora
