"""Any supported checkpoint -> our flat state, and a flat state -> any supported format.

The source format is detected from disk. HF tensors stream through the family's name
table one at a time; Orbax trees are checked against the shapes the config implies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from interop.checkpoints.formats import detect_format
from interop.checkpoints.hf import HFCheckpointReader, read_hf_config, write_hf_checkpoint
from interop.errors import UserError
from interop.sparse_format import fingerprint, merge_into, read_adapter
from jax_sft.checkpoints.orbax_io import restore_orbax_model, save_orbax_model
from jax_sft.models import registry
from jax_sft.models.hf_names import hf_to_ours, ours_to_hf

FORMATS = ("hf", "orbax")


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
    """(format, HF config, checked (our path, array) pairs in the stored dtype)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "sparse-adapter":
        raise UserError(f"{p}: a sparse adapter, not a model; merge it with convert --base BASE")
    config = read_hf_config(p)
    registry.family_of(config, f"{p / 'config.json'}")
    expected = registry.expected_shapes(config)
    if fmt == "orbax":
        _, flat = restore_orbax_model(p)
        return fmt, config, _checked(flat, expected, str(p))

    def stream() -> Iterator[tuple[str, np.ndarray]]:
        with HFCheckpointReader(p) as reader:
            yield from hf_to_ours(registry.name_table(config), reader, expected, str(p))

    return fmt, config, stream()


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
    elif fmt == "hf":
        table = registry.name_table(config)
        write_hf_checkpoint(
            dst,
            ours_to_hf(table, flat),
            config,
            max_shard_size=max_shard_size,
            tokenizer_src=tokenizer_src,
        )
    else:
        raise UserError(f"--to: unknown format '{fmt}' (supported: {', '.join(FORMATS)})")


def merged_adapter(adapter: Path, base: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config, flat state) of `base` with the sparse adapter merged in, exactly as
    training computed it; refuses a base whose fingerprint is not the adapter's."""
    adapter_config, deltas = read_adapter(adapter)
    _, config, flat = read_checkpoint(base)
    table = registry.name_table(config)
    hf = dict(ours_to_hf(table, flat))
    if fingerprint(hf.items()) != adapter_config.get("base_fingerprint"):
        raise UserError(
            f"{adapter}: trained on another base model than {base} (base_fingerprint differs)"
        )
    for name, (indices, values) in deltas.items():
        if name not in hf:
            raise UserError(f"{adapter}: tensor {name} is not in the base model {base}")
        hf[name] = merge_into(hf[name], indices, values)
    expected = registry.expected_shapes(config)
    return config, dict(hf_to_ours(table, hf.items(), expected, str(base)))
