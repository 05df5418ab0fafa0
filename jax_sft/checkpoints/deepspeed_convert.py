"""DeepSpeed checkpoints into our formats; the reading itself is `interop.checkpoints.deepspeed`.

DeepSpeed names tensors as the torch module does, which for a transformers model are the
Hugging Face names. The family's name table checks them and their shapes before anything
is read (and drops the tied copy HF does not store); `--to hf` then streams the tensors
into safetensors one at a time, so converting holds one tensor, not the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interop.checkpoints.deepspeed import DeepSpeedCheckpoint
from interop.checkpoints.deepspeed_files import config_dir, consolidated_weights
from interop.checkpoints.hf import HFCheckpointReader, is_hf_dir, read_hf_config
from interop.checkpoints.hf_write import write_hf_streamed
from jax_sft.models import registry
from jax_sft.models.hf_names import Transform, hf_layout


@dataclass
class OpenedDeepSpeed:
    config: dict
    config_dir: Path  # where config.json (and the tokenizer) were found
    ckpt: DeepSpeedCheckpoint
    layout: dict[str, tuple[str, Transform]]  # our path -> (DeepSpeed/HF name, transform)
    notes: list[str]  # what was read from where, for the user


def open_deepspeed(path: Path, base: str | Path | None, tag: str | None) -> OpenedDeepSpeed:
    """A DeepSpeed checkpoint with its model config (from `base` or a directory near it),
    names and shapes checked; 16-bit runs' frozen weights come from `base`'s weights."""
    where = config_dir(path, base)
    config = read_hf_config(where)
    registry.family_of(config, f"{where / 'config.json'}")
    frozen = HFCheckpointReader(Path(base)) if base and is_hf_dir(base) else None
    opened = open_deepspeed_as(config, path, tag, frozen)
    opened.config_dir = where
    if base is None:
        opened.notes.append(f"model config from {where / 'config.json'}")
    return opened


def open_deepspeed_as(
    config: dict, path: Path, tag: str | None = None, frozen: object | None = None
) -> OpenedDeepSpeed:
    """A DeepSpeed checkpoint of the model `config` describes, names and shapes checked."""
    ckpt = DeepSpeedCheckpoint(path, tag, base=frozen)
    table, expected = registry.name_table(config), registry.expected_shapes(config)
    layout = hf_layout(table, ckpt.shapes, expected, str(ckpt.dir))
    notes = [f"{ckpt.dir}: {note}" for note in ckpt.notes]
    for found in consolidated_weights(ckpt.dir):
        notes.append(f"{found} (16-bit) not used: the fp32 masters are")
    return OpenedDeepSpeed(config, Path(path), ckpt, layout, notes)


def deepspeed_to_ours(opened: OpenedDeepSpeed) -> Iterator[tuple[str, np.ndarray]]:
    """(our path, array) pairs, read one at a time."""
    expected = registry.expected_shapes(opened.config)
    for path, (name, transform) in opened.layout.items():
        yield path, transform.to_ours(opened.ckpt.get(name), expected[path])


def deepspeed_to_hf(opened: OpenedDeepSpeed, dst: Path, max_shard_size: int | str) -> int:
    """Write the HF directory `dst` (existing) tensor by tensor; the bytes written."""
    names = [name for name, _ in opened.layout.values()]
    plan = [(n, opened.ckpt.shapes[n], np.dtype(np.float32)) for n in names]
    write_hf_streamed(
        dst,
        plan,
        opened.ckpt.get,
        opened.config,
        max_shard_size=max_shard_size,
        tokenizer_src=opened.config_dir,
    )
    return sum(int(np.prod(shape)) * 4 for _, shape, _ in plan)
