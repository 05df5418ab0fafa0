"""Hugging Face model directories <-> numpy arrays, one tensor at a time.

Read: `config.json` plus weights as a single or sharded `model.safetensors` (with its
`.index.json`), or a single or sharded `pytorch_model.bin` (torch imported lazily, only
then). Every weight file is opened and checked in the constructor (safetensors refuses a
header whose offsets do not end exactly at the end of the file; index entries are checked
against their shards), so a truncated download fails with the file's name before anything
is converted. Write: safetensors shards no larger than `max_shard_size` (decimal units, as
transformers counts), an index when there is more than one, `config.json` and the
tokenizer files. Arrays keep their dtype (fp32, fp16, bf16 via ml_dtypes), so a read
followed by a write changes no bit.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from interop.checkpoints.hf_config import check_hf_config
from interop.errors import UserError
from interop.outputs import file_mode

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

# The safetensors dtypes that `safe_open(..., framework="numpy")` can return.
ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def is_hf_dir(path: str | Path) -> bool:
    """A directory with `config.json` and weights in a format we read."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / f).is_file() for f in WEIGHT_FILES)


def read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """A safetensors file (PyTorch's metadata) with the permissions the umask gives, as any
    other file of ours (safetensors itself creates it 0600)."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, file_mode())


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file; a truncated or corrupt file is a UserError."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise UserError(f"{path}: truncated or corrupt safetensors file ({err})") from None


def read_hf_config(path: str | Path) -> dict:
    """The parsed and checked `config.json` of a model directory."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"{p}: no config.json (not a Hugging Face model directory)")
    config = read_json_object(p / "config.json")
    check_hf_config(config, str(p / "config.json"))
    return config


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    """A CPU torch tensor as a numpy array with the same bits; bf16 becomes ml_dtypes'."""
    import torch

    t = tensor.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class HFCheckpointReader:
    """Lazy access to the tensors of an HF directory: names, shapes and dtypes up front,
    values one tensor at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._open: dict[Path, Any] = {}
        for file, expected in self._weight_files():
            if file.suffix == ".safetensors":
                found = self._scan_safetensors(file)
            else:
                found = self._scan_torch(file)
            for name in found:
                if name in self._where:
                    raise UserError(f"{file}: tensor {name} is also in {self._where[name].name}")
                self._where[name] = file
            missing = sorted(set(expected) - set(found))
            if missing:
                raise UserError(f"{file}: lacks tensor {missing[0]}, which the index places in it")
        self._names = sorted(self._where)

    def _weight_files(self) -> list[tuple[Path, list[str]]]:
        """(file, tensor names its index places there) for each weight file."""
        p = self.path
        for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
            if (p / single).is_file():
                return [(p / single, [])]
            if (p / index).is_file():
                weight_map = read_json_object(p / index).get("weight_map")
                if not isinstance(weight_map, dict) or not all(
                    isinstance(v, str) for v in weight_map.values()
                ):
                    raise UserError(f"{p / index}: no weight_map of tensor name -> file name")
                shards: dict[str, list[str]] = {}
                for name, shard in weight_map.items():
                    shards.setdefault(shard, []).append(name)
                for shard in shards:
                    if not (p / shard).is_file():
                        raise UserError(f"{p / index}: names shard {shard}, which is missing")
                return [(p / shard, names) for shard, names in shards.items()]
        raise UserError(f"{p}: no model weights ({', '.join(WEIGHT_FILES)})")

    def _handle(self, file: Path) -> Any:
        """The open safetensors file, or the (memory-mapped) state dict of a .bin file."""
        if file not in self._open:
            if file.suffix == ".safetensors":
                try:
                    self._open[file] = safe_open(str(file), framework="numpy")
                except SafetensorError as err:
                    raise UserError(
                        f"{file}: truncated or corrupt safetensors file ({err})"
                    ) from None
            else:
                self._open[file] = _load_torch_file(file)
        return self._open[file]

    def _scan_safetensors(self, file: Path) -> list[str]:
        handle = self._handle(file)
        names = list(handle.keys())
        for name in names:
            view = handle.get_slice(name)
            dtype = ST_DTYPES.get(view.get_dtype())
            if dtype is None:
                raise UserError(f"{file}: tensor {name} has dtype {view.get_dtype()}, unsupported")
            self._meta[name] = (tuple(view.get_shape()), dtype)
        return names

    def _scan_torch(self, file: Path) -> list[str]:
        state = self._handle(file)  # first: it explains a missing torch
        import torch

        for name, tensor in state.items():
            try:
                dtype = _torch_to_numpy(torch.empty(0, dtype=tensor.dtype)).dtype
            except TypeError:
                raise UserError(
                    f"{file}: tensor {name} has dtype {tensor.dtype}, unsupported"
                ) from None
            self._meta[name] = (tuple(tensor.shape), dtype)
        return list(state)

    def _file_of(self, name: str) -> Path:
        if name not in self._where:
            raise UserError(f"{self.path}: no tensor named {name}")
        return self._where[name]

    def names(self) -> list[str]:
        """All tensor names, sorted."""
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape, without reading the data."""
        self._file_of(name)
        return self._meta[name][0]

    def dtype(self, name: str) -> np.dtype:
        """The stored dtype (bf16 as `ml_dtypes.bfloat16`), without reading the data."""
        self._file_of(name)
        return self._meta[name][1]

    def get(self, name: str) -> np.ndarray:
        """One tensor, read from disk now."""
        file = self._file_of(name)
        if file.suffix == ".safetensors":
            return self._handle(file).get_tensor(name)
        return _torch_to_numpy(self._handle(file)[name])

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """`get(name)[index]`, reading (for safetensors) only that block from disk."""
        file = self._file_of(name)
        if file.suffix == ".safetensors":
            return self._handle(file).get_slice(name)[index]
        return _torch_to_numpy(self._handle(file)[name][index])

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._names:
            yield name, self.get(name)

    def close(self) -> None:
        """Drop the open files (they reopen on the next `get`)."""
        self._open.clear()

    def __enter__(self) -> HFCheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_torch_file(file: Path) -> dict:
    """A `pytorch_model.bin` as a state dict, memory-mapped when the file allows it."""
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{file}: reading pytorch_model.bin needs the torch extra "
            "(pip install 'jax-sft[torch]')"
        ) from None
    try:
        # mmap needs the zip format of torch >= 1.6; older files are read whole.
        state = torch.load(
            file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)
        )
    except Exception as err:  # any unpickling or archive failure means a bad file
        raise UserError(f"{file}: cannot read PyTorch weights ({err})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"{file}: not a state dict of named tensors")
    return state
