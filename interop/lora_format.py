"""LoRA adapter files in peft's own format, so `peft.PeftModel.from_pretrained` loads them.

A peft LoRA adapter is a directory with `adapter_config.json` (`peft_type: "LORA"`, rank
`r`, `lora_alpha`, `target_modules`, ...) and `adapter_model.safetensors` holding, for every
adapted module (its Hugging Face module name, e.g. `model.layers.0.self_attn.q_proj`),
`base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]. The
adapted weight is W + scaling * B @ A with scaling = lora_alpha / r, transposed for
modules stored [in, out] (GPT-2's Conv1D, `fan_in_fan_out: true`). Everything here is
numpy, in Hugging Face names and layouts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import read_json_object, read_tensors, write_tensors
from interop.errors import UserError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
A_KEY, B_KEY = ".lora_A.weight", ".lora_B.weight"

Factors = Mapping[str, tuple[np.ndarray, np.ndarray]]  # module -> (A [r, in], B [out, r])


def adapter_config(
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | str,
    fan_in_fan_out: bool,
    base_model: str | None,
) -> dict:
    """peft's `LoraConfig` fields for a plain LoRA (keys that peft has read for years;
    fields it does not find take its defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
    }


def write_adapter(dst: Path, factors: Factors, config: dict) -> None:
    """Write {module: (A, B)} (fp32) and `config` into the existing directory `dst`."""
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[PREFIX + module + A_KEY] = np.ascontiguousarray(a, dtype=np.float32)
        tensors[PREFIX + module + B_KEY] = np.ascontiguousarray(b, dtype=np.float32)
    write_tensors(tensors, dst / WEIGHTS)
    (dst / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def is_lora_adapter(path: str | Path) -> bool:
    """True for a directory whose `adapter_config.json` says `peft_type: LORA`."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("peft_type") == "LORA"


def _check_plain(path: Path, config: dict) -> None:
    """Refuse the peft variants whose weights are not just W + scaling * B @ A."""
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError(f"{path}: DoRA and per-module rank/alpha patterns are not supported")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise UserError(f"{path}: adapters that train biases are not supported")


def read_adapter(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(config, {module: (A [r, in], B [out, r])}) of a plain peft LoRA adapter."""
    if not is_lora_adapter(path) or not (path / WEIGHTS).is_file():
        raise UserError(f"{path}: not a peft LoRA adapter (needs {CONFIG} and {WEIGHTS})")
    config = read_json_object(path / CONFIG)
    _check_plain(path, config)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"{path / CONFIG}: 'r' must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise UserError(f"{path / CONFIG}: 'lora_alpha' must be a number, got {alpha!r}")
    tensors = read_tensors(path / WEIGHTS)
    factors = {}
    for key in sorted(tensors):
        if not (key.startswith(PREFIX) and key.endswith((A_KEY, B_KEY))):
            raise UserError(f"{path}: unexpected tensor {key} (not a plain LoRA factor)")
        if key.endswith(A_KEY):
            module = key[len(PREFIX) : -len(A_KEY)]
            b = tensors.get(PREFIX + module + B_KEY)
            if b is None:
                raise UserError(f"{path}: {key} has no matching lora_B")
            factors[module] = (tensors[key], b)
    if 2 * len(factors) != len(tensors):
        raise UserError(f"{path}: some lora_B tensors have no matching lora_A")
    return config, factors


def scaling(config: Mapping) -> float:
    """peft's scaling: lora_alpha / r (lora_alpha / sqrt(r) for rsLoRA)."""
    r = config["r"]
    return config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)


def lora_delta(a: np.ndarray, b: np.ndarray, scale: float, fan_in_fan_out: bool) -> np.ndarray:
    """scale * B @ A in the layout of the module's weight ([in, out] for Conv1D)."""
    delta = scale * (b.astype(np.float32) @ a.astype(np.float32))
    return np.ascontiguousarray(delta.T) if fan_in_fan_out else delta


def merge_lora(
    base: Mapping[str, np.ndarray], config: Mapping, factors: Factors
) -> dict[str, np.ndarray]:
    """A copy of the HF-named `base` with every factor pair merged into `<module>.weight`:
    added in float32 and rounded once to the weight's dtype, as the JAX backend trains."""
    merged = dict(base)
    scale, fan_in_fan_out = scaling(config), bool(config.get("fan_in_fan_out"))
    for module, (a, b) in factors.items():
        name = module + ".weight"
        if name not in merged:
            raise UserError(f"LoRA module {module}: the base model has no tensor {name}")
        weight = merged[name]
        delta = lora_delta(a, b, scale, fan_in_fan_out)
        if delta.shape != weight.shape:
            raise UserError(
                f"LoRA module {module}: B @ A has shape {delta.shape}, the weight {weight.shape}"
            )
        merged[name] = (weight.astype(np.float32) + delta).astype(weight.dtype)
    return merged
