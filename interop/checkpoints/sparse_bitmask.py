"""Pruned HF checkpoints stored as a bitmask plus non-zero values (`convert --to sparse`).

The layout of the `sparse-bitmask` format of `compressed-tensors` (written from its
description, not checked against that library, which is not installed here). A 2-D
tensor `W` [rows, cols] whose zeros make it worth it is stored as four tensors:

- `W.bitmask`: uint8 [rows, ceil(cols/8)], `np.packbits(W != 0, axis=1)` (numpy's
  big-endian bit order: column 0 is the high bit of byte 0; padding bits are 0);
- `W.compressed`: the entries whose bits are not all zero, row-major, 1-D, W's dtype;
- `W.row_offsets`: int32 [rows] (int64 past 2**31 values), where each row starts in
  `compressed`;
- `W.shape`: int64 [2], the original shape.

"Zero" is the bit pattern, so -0.0 is kept as a value and a round trip changes no bit
(fp32, fp16, bf16 alike). Every other tensor is stored as it is. The directory is an HF
one (`config.json`, safetensors shards, tokenizer files); `config.json` carries the
marker `"sparsity_config": {"format": "sparse-bitmask", "targets": [...], ...}` at the
top level (not under `quantization_config`, so `transformers` does not hand the files to
`compressed-tensors`, whose bit order we have not verified).

Size of one stored tensor with z = its fraction of zeros and b bytes per entry:
rows*ceil(cols/8) + (1-z)*rows*cols*b + 4*rows + 16 bytes, against rows*cols*b dense.
A tensor is stored sparse when z >= MIN_SPARSITY and that size is below the dense one:
the break-even is z > (1/8 + 4/cols)/b, just over 1/32 for fp32 and 1/16 for bf16 on
wide matrices; the floor keeps near-dense tensors, which gain little, plain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import HFCheckpointReader, is_hf_dir, read_hf_config, read_json_object
from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.errors import UserError

FORMAT = "sparse-bitmask"
MARKER = "sparsity_config"
PARTS = ("bitmask", "compressed", "row_offsets", "shape")
MIN_SPARSITY = 0.25


def is_sparse_dir(path: str | Path) -> bool:
    """An HF directory whose `config.json` carries our sparse-bitmask marker."""
    p = Path(path)
    if not is_hf_dir(p):
        return False
    marker = read_json_object(p / "config.json").get(MARKER)
    return isinstance(marker, dict) and marker.get("format") == FORMAT


def stored_size(shape: tuple[int, int], zeros: int, itemsize: int) -> int:
    """Bytes of a [rows, cols] tensor with `zeros` zero entries in this layout."""
    rows, cols = shape
    return rows * -(-cols // 8) + (rows * cols - zeros) * itemsize + 4 * rows + 16


def _nonzero(array: np.ndarray) -> np.ndarray:
    """Where the entries' bits are not all zero (so -0.0 counts as a value)."""
    return array.view(np.dtype(f"u{array.dtype.itemsize}")) != 0


def encode(array: np.ndarray) -> dict[str, np.ndarray] | None:
    """The four parts of a 2-D tensor worth storing sparse (module docstring), else None."""
    if array.ndim != 2 or array.dtype.itemsize not in (1, 2, 4, 8) or array.size == 0:
        return None
    mask = _nonzero(np.ascontiguousarray(array))
    zeros = array.size - int(np.count_nonzero(mask))
    if zeros < MIN_SPARSITY * array.size:
        return None
    if stored_size(array.shape, zeros, array.dtype.itemsize) >= array.nbytes:
        return None
    counts = np.count_nonzero(mask, axis=1)
    offset_type = np.int32 if array.size - zeros < 2**31 else np.int64
    return {
        "bitmask": np.packbits(mask, axis=1),
        "compressed": np.ascontiguousarray(array[mask]),
        "row_offsets": (np.cumsum(counts) - counts).astype(offset_type),
        "shape": np.array(array.shape, np.int64),
    }


def decode(parts: dict[str, np.ndarray], where: str) -> np.ndarray:
    """The dense tensor from its parts; a UserError naming `where` (file: tensor) when
    they disagree with each other."""
    shape = parts["shape"]
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise UserError(f"{where}.shape: expected 2 non-negative integers, got {shape.tolist()}")
    rows, cols = (int(n) for n in shape)
    bitmask = parts["bitmask"]
    expected = (rows, -(-cols // 8))
    if bitmask.dtype != np.uint8 or bitmask.shape != expected:
        raise UserError(
            f"{where}.bitmask: {bitmask.dtype} {list(bitmask.shape)}, expected uint8 "
            f"{list(expected)} for shape {[rows, cols]}"
        )
    mask = np.unpackbits(bitmask, axis=1, count=cols).astype(bool)
    values, marked = parts["compressed"], int(np.count_nonzero(mask))
    if values.ndim != 1 or values.size != marked:
        raise UserError(f"{where}.compressed: {values.size} values, the bitmask marks {marked}")
    counts = np.count_nonzero(mask, axis=1)
    offsets = parts["row_offsets"]
    if offsets.shape != (rows,) or not np.array_equal(offsets, np.cumsum(counts) - counts):
        raise UserError(f"{where}.row_offsets: disagree with the bitmask")
    dense = np.zeros((rows, cols), values.dtype)
    dense[mask] = values
    return dense


def dense_config(config: dict) -> dict:
    """The config of the dense model: the marker removed."""
    return {k: v for k, v in config.items() if k != MARKER}


def iter_dense(reader: HFCheckpointReader, config: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, dense array) for every tensor of a sparse directory, decoded one at a
    time. A missing part is a UserError; an unknown name is left for the name table."""
    targets = config[MARKER].get("targets")  # a dict: `is_sparse_dir` checked it
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise UserError(
            f"{reader.path / 'config.json'}: '{MARKER}.targets' must be a list of tensor names"
        )
    targets = set(targets)
    names = set(reader.names())
    part_names = {f"{t}.{part}" for t in targets for part in PARTS}
    for target in sorted(targets):
        for part in PARTS:
            if f"{target}.{part}" not in names:
                raise UserError(f"{reader.path}: tensor {target} lacks its part {part}")
    for name in sorted((names - part_names) | targets):
        if name in targets:
            parts = {part: reader.get(f"{name}.{part}") for part in PARTS}
            yield name, decode(parts, f"{reader.path}: tensor {name}")
        else:
            yield name, reader.get(name)


def write_sparse(
    dst: Path,
    tensors: Iterable[tuple[str, np.ndarray]],
    config: dict,
    *,
    max_shard_size: int | str = "5GB",
    tokenizer_src: str | Path | None = None,
) -> None:
    """Write HF (name, array) pairs into existing `dst` in this layout, one at a time."""
    if MARKER in config:
        raise UserError(f"--to sparse: the source config already has a '{MARKER}'")
    targets: list[str] = []
    zeros = total = 0

    def encoded() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal zeros, total
        for name, array in tensors:
            parts = encode(np.asarray(array))
            if parts is None:
                yield name, array
                continue
            targets.append(name)
            total += array.size
            zeros += array.size - parts["compressed"].size
            for part in PARTS:
                yield f"{name}.{part}", parts[part]

    write_hf_checkpoint(
        dst, encoded(), config, max_shard_size=max_shard_size, tokenizer_src=tokenizer_src
    )
    # The targets are known once every tensor is written: the config is written again.
    config = dict(config)
    config[MARKER] = {
        "format": FORMAT,
        "sparsity_structure": "unstructured",
        "global_sparsity": zeros / total if total else 0.0,
        "min_sparsity": MIN_SPARSITY,
        "targets": sorted(targets),
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def stored_bytes(path: str | Path) -> int:
    """Bytes of all tensors in an HF directory as stored (sparse parts or dense)."""
    with HFCheckpointReader(path) as reader:
        return sum(
            int(np.prod(reader.shape(n), dtype=np.int64)) * reader.dtype(n).itemsize
            for n in reader.names()
        )


class DecodedSparse:
    """A sparse directory decoded into memory, read like `HFCheckpointReader`: what a
    training run starts from (the model dense once, at its own size; no shard is
    re-read)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with HFCheckpointReader(self.path) as reader:
            self._tensors = dict(iter_dense(reader, read_hf_config(self.path)))

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return self._tensors[name].dtype

    def get(self, name: str) -> np.ndarray:
        return self._tensors[name]

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        return self._tensors[name][index]
