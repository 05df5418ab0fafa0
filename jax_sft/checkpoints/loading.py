"""Any supported checkpoint -> our flat state, and a flat state -> any supported format.

The source format is detected from disk. HF tensors stream through the family's name
table one at a time; Orbax trees are checked against the shapes the config implies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from interop.checkpoints.formats import detect_format
from interop.checkpoints.hf import (
    HFCheckpointReader,
    read_hf_config,
)
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.checkpoints.sparse_bitmask import dense_config, iter_dense, write_sparse
from interop.errors import UserError
from interop.lora_format import merge_lora
from interop.lora_format import read_adapter as read_lora
from interop.sparse_format import checked_adapter, merge_into
from jax_sft.checkpoints.deepspeed_convert import deepspeed_to_ours, open_deepspeed
from jax_sft.checkpoints.orbax_io import restore_orbax_model, save_orbax_model
from jax_sft.checkpoints.placed import TensorSource
from jax_sft.models import registry
from jax_sft.models.hf_names import NameTable, hf_to_ours, ours_to_hf

FORMATS = ("hf", "orbax", "sparse")


def _checked(
    flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str
) -> Iterator[tuple[str, np.ndarray]]:
    for path, array in flat.items():
        if path not in expected:
            raise UserError(f"{source}: unexpected parameter {path}")
        if tuple(array.shape) != expected[path]:
            raise UserError(
                f"{source}: parameter {path} has shape {tuple(array.shape)}, "
                f"expected {expected[path]}"
            )
        yield path, array
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise UserError(f"{source}: missing parameter {missing[0]}")


def iter_checkpoint(path: str | Path) -> tuple[str, dict, Iterator[tuple[str, np.ndarray]]]:
    """(format, HF config, checked (our path, array) pairs in the stored dtype). A
    DeepSpeed checkpoint's config is the one found near it (`deepspeed_convert`)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt.endswith("adapter"):
        raise UserError(f"{p}: an adapter, not a model; merge it with convert --base BASE")
    if fmt == "deepspeed":
        opened = open_deepspeed(p, None, None)
        return fmt, opened.config, deepspeed_to_ours(opened)
    config = read_hf_config(p)
    registry.family_of(config, f"{p / 'config.json'}")
    expected = registry.expected_shapes(config)
    if fmt == "orbax":
        _, flat = restore_orbax_model(p)
        return fmt, config, _checked(flat, expected, str(p))

    def stream() -> Iterator[tuple[str, np.ndarray]]:
        with HFCheckpointReader(p) as reader:
            tensors = iter_dense(reader, config) if fmt == "sparse" else reader
            yield from hf_to_ours(registry.name_table(config), tensors, expected, str(p))

    return fmt, dense_config(config) if fmt == "sparse" else config, stream()


def read_checkpoint(path: str | Path) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(format, HF config, flat state {our path: numpy array} in the stored dtype)."""
    fmt, config, pairs = iter_checkpoint(path)
    return fmt, config, dict(pairs)


def write_checkpoint(
    dst: Path,
    fmt: str,
    config: dict,
    flat: Mapping[str, np.ndarray],
    *,
    tokenizer_src: Path | None = None,
    max_shard_size: int | str = "5GB",
) -> None:
    """Write `flat` into the existing directory `dst` as format `fmt`."""
    if fmt == "orbax":
        save_orbax_model(dst, flat, config, tokenizer_src)
    elif fmt in ("hf", "sparse"):
        writer = write_sparse if fmt == "sparse" else write_hf_checkpoint
        writer(
            dst,
            ours_to_hf(registry.name_table(config), flat),
            config,
            max_shard_size=max_shard_size,
            tokenizer_src=tokenizer_src,
        )
    else:
        raise UserError(f"--to: unknown format '{fmt}' (supported: {', '.join(FORMATS)})")


def deltas_in_our_layout(
    adapter: Path,
    deltas: Mapping[str, tuple[np.ndarray, np.ndarray]],
    table: NameTable,
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{our path: (our flat indices, values)} for an adapter's HF-named deltas, on a
    model whose parameters have `shapes`."""
    ours = {table.to_hf_name(path)[0]: path for path in shapes}
    out = {}
    for name, (indices, values) in deltas.items():
        if name not in ours:
            raise UserError(f"{adapter}: tensor {name} is not in the base model")
        path = ours[name]
        transform = table.to_hf_name(path)[1]
        order_ours = transform.ours_flat_index(indices, shapes[path])
        order = np.argsort(order_ours, kind="stable")
        out[path] = (order_ours[order].astype(np.int32), values[order].astype(np.float32))
    return out


def adapter_patches(adapter: Path, base: TensorSource) -> dict[str, Callable]:
    """{our path: f(weight) -> the weight with the adapter merged in} for the tensors an
    adapter changes, in our layout and the stored dtype, exactly as training computed
    them. A sparse adapter refuses a base whose fingerprint is not its own; a peft LoRA
    adapter records none, so only the shapes are checked."""
    table, shapes = base.table, base.shapes
    if detect_format(adapter) != "lora-adapter":
        _, deltas = checked_adapter(adapter, base.path, base.fingerprint())
        ours = deltas_in_our_layout(adapter, deltas, table, shapes)
        return {p: (lambda w, i=i, v=v: merge_into(w, i, v)) for p, (i, v) in ours.items()}
    config, factors = read_lora(adapter)
    paths = {table.to_hf_name(p)[0]: p for p in shapes}
    patches = {}
    for module, pair in factors.items():
        name = module + ".weight"
        if name not in paths:
            raise UserError(f"LoRA module {module}: the base model has no tensor {name}")
        path = paths[name]
        args = (name, module, pair, table.to_hf_name(path)[1], shapes[path], config)
        patches[path] = functools.partial(_merge_lora, *args)
    return patches


def _merge_lora(name, module, pair, transform, shape, config, weight):
    hf = merge_lora({name: transform.to_hf(weight)}, config, {module: pair})[name]
    return transform.to_ours(hf, shape)


def merged_adapter(adapter: Path, base: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config, flat state) of `base` with the adapter merged in (`adapter_patches`)."""
    _, config, flat = read_checkpoint(base)
    for path, patch in adapter_patches(adapter, TensorSource(base)).items():
        flat[path] = patch(flat[path])
    return config, flat
