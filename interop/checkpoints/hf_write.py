"""Hugging Face model directories written: config, safetensors shards (+ index), tokenizer.

Two writers. `write_hf_checkpoint` takes tensors as they come and holds at most one
shard's arrays. `write_hf_streamed` is told every tensor's name, shape and dtype first,
so it writes each shard's safetensors header before the data and then each tensor's bytes
as it is read: it holds one tensor, however large the shard (`jax-sft convert` from a
DeepSpeed checkpoint uses it). Shards are no larger than `max_shard_size` (decimal units,
as transformers counts); both writers cut them the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import (
    HF_TOKENIZER_FILES,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    ST_DTYPES,
    write_tensors,
)
from interop.errors import UserError
from interop.outputs import file_mode

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes in '5GB', '500MB', '10KB' (decimal, as transformers), '2GiB' or an int."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not m or m.group(2) not in _UNITS:
        raise UserError(f"--max-shard-size: cannot read size '{size}' (e.g. 5GB, 500MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def write_hf_checkpoint(
    dst: Path,
    tensors: Iterable[tuple[str, np.ndarray]],
    config: dict,
    *,
    max_shard_size: int | str = "5GB",
    tokenizer_src: str | Path | None = None,
) -> None:
    """Write config, safetensors shards (+ index) and tokenizer files into existing `dst`.

    `tensors` is consumed lazily; at most one shard's arrays are held at a time.
    """
    limit = parse_size(max_shard_size)
    dst = Path(dst)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shards: list[list[str]] = []
    pending: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    pending_bytes = total_bytes = total_params = 0

    def flush() -> None:
        write_tensors(pending, dst / f".shard-{len(shards)}.tmp")
        shards.append(list(pending))
        pending.clear()

    for name, array in tensors:
        if name in seen:
            raise ValueError(f"tensor {name} given twice")
        seen.add(name)
        array = np.asarray(array, order="C")
        if pending and pending_bytes + array.nbytes > limit:
            flush()
            pending_bytes = 0
        pending[name] = array
        pending_bytes += array.nbytes
        total_bytes += array.nbytes
        total_params += array.size
    if pending or not shards:
        flush()
    _finish(dst, shards, total_params, total_bytes, tokenizer_src)


Planned = tuple[str, tuple[int, ...], np.dtype]  # name, shape, dtype


def write_hf_streamed(
    dst: Path,
    plan: list[Planned],
    read: Callable[[str], np.ndarray],
    config: dict,
    *,
    max_shard_size: int | str = "5GB",
    tokenizer_src: str | Path | None = None,
) -> None:
    """As `write_hf_checkpoint`, for tensors known in advance (`plan`) and read one at a
    time by `read(name)`, which must return the planned shape and dtype."""
    limit = parse_size(max_shard_size)
    dst = Path(dst)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shards: list[list[Planned]] = [[]]
    size = 0
    for entry in plan:
        nbytes = _nbytes(entry)
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    for i, shard in enumerate(shards):
        _write_shard(dst / f".shard-{i}.tmp", shard, read)
    total_params = sum(int(np.prod(shape, dtype=np.int64)) for _, shape, _ in plan)
    total_bytes = sum(_nbytes(entry) for entry in plan)
    names = [[name for name, _, _ in shard] for shard in shards]
    _finish(dst, names, total_params, total_bytes, tokenizer_src)


_CODES = {dtype: code for code, dtype in ST_DTYPES.items()}


def _nbytes(entry: Planned) -> int:
    _, shape, dtype = entry
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _write_shard(path: Path, shard: list[Planned], read: Callable[[str], np.ndarray]) -> None:
    """One safetensors file: the header from the plan, then each tensor as it is read."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in shard:
        end = offset + _nbytes((name, shape, dtype))
        code = _CODES[np.dtype(dtype)]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for name, shape, dtype in shard:
            array = np.ascontiguousarray(read(name))
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(
                    f"{name}: read {array.shape} {array.dtype}, planned {shape} {dtype}"
                )
            f.write(array.tobytes())
    os.chmod(path, file_mode())


def _finish(
    dst: Path,
    shards: list[list[str]],
    total_params: int,
    total_bytes: int,
    tokenizer_src: str | Path | None,
) -> None:
    """Name the written `.shard-i.tmp` files, write the index when there are several,
    copy the tokenizer files."""
    if len(shards) == 1:
        (dst / ".shard-0.tmp").rename(dst / SAFETENSORS)
    else:
        weight_map = {}
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            (dst / f".shard-{i}.tmp").rename(dst / fname)
            weight_map.update(dict.fromkeys(names, fname))
        index = {
            "metadata": {"total_parameters": total_params, "total_size": total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (dst / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer_src is not None:
        src = Path(tokenizer_src)
        for fname in HF_TOKENIZER_FILES:
            if (src / fname).is_file():
                shutil.copy2(src / fname, dst / fname)
