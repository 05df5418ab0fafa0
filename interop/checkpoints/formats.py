"""Recognising a checkpoint's format from what lies on disk."""

from __future__ import annotations

from pathlib import Path

from interop.checkpoints.deepspeed_files import is_deepspeed_dir
from interop.checkpoints.hf import is_hf_dir, read_json_object
from interop.checkpoints.sparse_bitmask import is_sparse_dir
from interop.errors import UserError
from interop.lora_format import is_lora_adapter

ORBAX_PARAMS = "params"


def is_orbax_model_dir(path: str | Path) -> bool:
    """Our Orbax model layout: `config.json` plus an Orbax tree under `params/`."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / ORBAX_PARAMS / "_CHECKPOINT_METADATA").is_file()


def detect_format(path: str | Path) -> str:
    """'hf', 'sparse' (HF with bitmask-compressed tensors), 'orbax', 'deepspeed',
    'lora-adapter' (peft) or 'sparse-adapter'; a UserError naming the path when it is none."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if (p / "adapter_config.json").is_file():
        read_json_object(p / "adapter_config.json")  # a broken file is the user's to mend
        return "lora-adapter" if is_lora_adapter(p) else "sparse-adapter"
    if is_orbax_model_dir(p):
        return "orbax"
    if is_deepspeed_dir(p):
        return "deepspeed"
    if is_sparse_dir(p):
        return "sparse"
    if is_hf_dir(p):
        return "hf"
    if p.is_dir() and not (p / "config.json").is_file():
        raise UserError(f"{p}: no config.json (not a Hugging Face or Orbax model directory)")
    raise UserError(
        f"{p}: not a recognised checkpoint (expected a Hugging Face, Orbax or DeepSpeed directory)"
    )


def adapter_base(adapter: Path, base: str | None) -> Path:
    """The base model an adapter (sparse or peft LoRA) applies to: `base` if given, else
    the one its config names."""
    config = read_json_object(adapter / "adapter_config.json")
    named = base or config.get("base_model") or config.get("base_model_name_or_path")
    if not named or not Path(named).exists() or detect_format(named).endswith("adapter"):
        raise UserError(
            f"model.base: name the base model that {adapter} was trained on "
            f"(its config names {named!r})"
        )
    return Path(named)
