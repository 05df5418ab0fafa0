"""Hugging Face model directories <-> numpy arrays, one tensor at a time.

Read: `config.json` plus weights as a single or sharded `model.safetensors` (with its
`.index.json`), or a single or sharded `pytorch_model.bin` (torch imported lazily, only
then). Safetensors headers are checked against the file size up front, so a truncated
download fails with the file's name before anything is converted. Write: safetensors
shards no larger than `max_shard_size` (decimal units, as transformers counts), an index
when there is more than one, `config.json` and the tokenizer files. Arrays keep their
dtype (fp32, fp16, bf16 via ml_dtypes), so a read followed by a write changes no bit.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from interop.errors import UserError

HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
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
}


def is_hf_dir(path: str | Path) -> bool:
    """A directory with `config.json` and weights in a format we read."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / f).is_file() for f in WEIGHT_FILES)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None


def read_hf_config(path: str | Path) -> dict:
    """The parsed `config.json` of a model directory."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"{p}: no config.json (not a Hugging Face model directory)")
    return _read_json(p / "config.json")


def parse_size(size: int | str) -> int:
    """Bytes in '5GB', '500MB', '10KB', '2GiB' or an int."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not m or m.group(2) not in _UNITS:
        raise UserError(f"--max-shard-size: cannot read size '{size}' (e.g. 5GB, 500MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _check_safetensors(file: Path) -> dict:
    """The header of a safetensors file, after checking the file holds all its data."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{file}: truncated or corrupt safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise UserError(f"{file}: truncated or corrupt safetensors file (header cut off)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{file}: truncated or corrupt safetensors file (bad header)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise UserError(
            f"{file}: truncated or corrupt safetensors file "
            f"({size} bytes, the header needs {8 + n + end})"
        )
    return header


class HFCheckpointReader:
    """Lazy access to the tensors of an HF directory: names, shapes and dtypes from headers,
    values one tensor at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._open: dict[Path, object] = {}
        files = self._weight_files()
        for file in files:
            if file.suffix == ".safetensors":
                for name, info in _check_safetensors(file).items():
                    if name == "__metadata__":
                        continue
                    self._where[name] = file
                    self._meta[name] = (tuple(info["shape"]), np.dtype(_ST_DTYPES[info["dtype"]]))
            else:
                for name, tensor in self._torch_file(file).items():
                    self._where[name] = file
                    self._meta[name] = (tuple(tensor.shape), _torch_to_numpy(tensor[:0]).dtype)

    def _weight_files(self) -> list[Path]:
        p = self.path
        for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
            if (p / single).is_file():
                return [p / single]
            if (p / index).is_file():
                weight_map = _read_json(p / index).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise UserError(f"{p / index}: no weight_map")
                shards = [p / s for s in dict.fromkeys(weight_map.values())]
                for shard in shards:
                    if not shard.is_file():
                        raise UserError(f"{p / index}: names shard {shard.name}, which is missing")
                return shards
        raise UserError(f"{p}: no model weights ({', '.join(WEIGHT_FILES)})")

    def _torch_file(self, file: Path) -> dict:
        if file not in self._open:
            try:
                import torch
            except ImportError:
                raise UserError(
                    f"{file}: reading pytorch_model.bin needs the torch extra "
                    "(pip install 'jax-sft[torch]')"
                ) from None
            try:
                self._open[file] = torch.load(
                    file, map_location="cpu", weights_only=True, mmap=True
                )
            except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
                raise UserError(f"{file}: cannot read PyTorch weights ({err})") from None
        return self._open[file]

    def names(self) -> list[str]:
        return sorted(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> np.dtype:
        return self._meta[name][1]

    def get(self, name: str) -> np.ndarray:
        """One tensor, read from disk now."""
        file = self._where[name]
        if file.suffix != ".safetensors":
            return _torch_to_numpy(self._torch_file(file)[name])
        if file not in self._open:
            self._open[file] = safe_open(str(file), framework="numpy")
        return self._open[file].get_tensor(name)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.names():
            yield name, self.get(name)

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> HFCheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _torch_to_numpy(tensor: object) -> np.ndarray:
    import torch

    t = tensor.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def write_hf_checkpoint(
    dst: Path,
    tensors: Iterable[tuple[str, np.ndarray]],
    config: dict,
    *,
    max_shard_size: int | str = "5GB",
    tokenizer_src: str | Path | None = None,
) -> None:
    """Write config, safetensors shards (+ index) and tokenizer files into existing `dst`."""
    limit = parse_size(max_shard_size)
    dst = Path(dst)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shards: list[list[str]] = []
    pending: dict[str, np.ndarray] = {}
    pending_bytes = total = 0

    def flush() -> None:
        save_file(pending, str(dst / f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
        shards.append(list(pending))
        pending.clear()

    for name, array in tensors:
        array = np.ascontiguousarray(array)
        if pending and pending_bytes + array.nbytes > limit:
            flush()
            pending_bytes = 0
        pending[name] = array
        pending_bytes += array.nbytes
        total += array.nbytes
    if pending or not shards:
        flush()

    if len(shards) == 1:
        (dst / "shard-0.tmp").rename(dst / SAFETENSORS)
    else:
        weight_map = {}
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            (dst / f"shard-{i}.tmp").rename(dst / fname)
            weight_map.update({n: fname for n in names})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")

    if tokenizer_src is not None:
        src = Path(tokenizer_src)
        for fname in HF_TOKENIZER_FILES:
            if (src / fname).is_file():
                shutil.copy2(src / fname, dst / fname)
