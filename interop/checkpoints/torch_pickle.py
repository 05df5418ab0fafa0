"""PyTorch's `.pt` files read without torch, and without running anything they name.

`torch.save` writes a zip archive whose members are stored, not compressed: `data.pkl`,
a pickle of the saved object, and one member `data/<key>` per tensor storage, raw bytes
in the tensor's dtype. A pickle names the callables that rebuild its object and
unpickling calls them, so a pickle from elsewhere can run any code: that is how a
malicious checkpoint works. We unpickle with an allow-list instead: the few names a
DeepSpeed checkpoint holds (an `OrderedDict`, torch's tensor rebuilders, `torch.Size`,
DeepSpeed's loss scaler, ZeRO stage enum and fragment addresses), each mapped to a
harmless stand-in of ours. Any other name refuses the file, naming it; nothing is
called.

Tensors come back as `StoredTensor`: which file, where its bytes lie, dtype and shape.
Nothing is read until asked, and then only the bytes asked for, so a reader that walks
a checkpoint one tensor at a time holds one tensor at a time.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interop.errors import UserError

# storage class name -> (numpy dtype of the stored bytes, bytes per element)
_STORAGES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    file: Path
    offset: int  # of its first byte in the file
    dtype: str
    numel: int


@dataclass(frozen=True)
class StoredTensor:
    """A tensor of a `.pt` file, not read yet."""

    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dtype(self) -> str:
        """The stored dtype: a numpy dtype string, or 'bfloat16'."""
        return self.storage.dtype

    def read(self) -> np.ndarray:
        """The whole tensor, in float32 if it was stored in 16-bit floats (exactly)."""
        if self.numel == 0:
            return np.zeros(self.shape, _widened(self.dtype))
        contiguous = all(
            st == int(np.prod(self.shape[i + 1 :], dtype=np.int64))
            for i, st in enumerate(self.stride)
            if self.shape[i] > 1
        )
        if contiguous:
            return self.read_flat(0, self.numel).reshape(self.shape)
        extent = 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride, strict=True))
        base = self.read_flat(0, extent)
        itemsize = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base, self.shape, tuple(st * itemsize for st in self.stride)
        )
        return np.ascontiguousarray(view)

    def read_flat(self, start: int, count: int) -> np.ndarray:
        """Elements [start, start + count) of the storage from this tensor's offset: a
        1-D slice of a flat tensor, read from disk alone."""
        first = self.storage_offset + start
        if start < 0 or count < 0 or first + count > self.storage.numel:
            raise UserError(
                f"{self.storage.file}: a tensor reaches past its storage "
                f"({first + count} > {self.storage.numel} elements); the file is damaged"
            )
        raw_dtype = "<u2" if self.dtype == "bfloat16" else self.dtype
        size = np.dtype(raw_dtype).itemsize
        with open(self.storage.file, "rb") as f:
            data = os.pread(f.fileno(), count * size, self.storage.offset + first * size)
        if len(data) != count * size:
            raise UserError(f"{self.storage.file}: truncated (a tensor ends past the file)")
        array = np.frombuffer(data, raw_dtype)
        if self.dtype == "bfloat16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(_widened(self.dtype), copy=False)


def _widened(dtype: str) -> np.dtype:
    return np.dtype(np.float32 if dtype in ("bfloat16", "<f2") else dtype)


class _Record:
    """Stands in for an object of DeepSpeed's (a loss scaler): its attributes, nothing else."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {})


class FragmentAddress(tuple):
    """DeepSpeed's `fragment_address(numel, start)`."""

    def __new__(cls, *args: int) -> FragmentAddress:
        return super().__new__(cls, args)


def _rebuild_tensor(storage, storage_offset, size, stride, *rest) -> StoredTensor:
    return StoredTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _as_tuple(dims=()) -> tuple:
    return tuple(dims)


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells a bytes object
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *rest: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *rest: data,
    ("torch._tensor", "_rebuild_from_type_v2"): lambda func, kind, args, *rest: func(*args),
    ("torch", "Tensor"): object,
    ("torch.nn.parameter", "Parameter"): object,
    ("torch", "Size"): _as_tuple,
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"): _Record,
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"): _Record,
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"): int,
    ("deepspeed.utils.tensor_fragment", "fragment_address"): FragmentAddress,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()},
}


class _Refused(Exception):
    pass


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, records: dict[str, _Storage]):
        super().__init__(io.BytesIO(data))
        self.records = records

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or str(key) not in self.records:
            raise _Refused(f"storage {kind!r} {key!r}")
        found = self.records[str(key)]
        return _Storage(found.file, found.offset, kind.dtype, int(numel))


def load(path: str | Path) -> object:
    """The object a `.pt` file holds, its tensors as `StoredTensor`; a UserError naming
    the file when it is not a readable zip checkpoint or names anything not allowed."""
    file = Path(path)
    try:
        with zipfile.ZipFile(file) as archive:
            records, pkl = _members(file, archive)
            data = archive.read(pkl)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as err:
        raise UserError(f"{file}: not a readable PyTorch checkpoint ({err})") from None
    try:
        return _Unpickler(data, records).load()
    except _Refused as refused:
        raise UserError(
            f"{file}: refused: the pickle calls {refused}, which a DeepSpeed checkpoint "
            "does not hold (nothing in it was run)"
        ) from None
    except Exception as err:  # a damaged pickle fails in many ways; all mean a bad file
        raise UserError(f"{file}: unreadable pickle ({type(err).__name__}: {err})") from None


def _members(file: Path, archive: zipfile.ZipFile) -> tuple[dict[str, _Storage], str]:
    """{storage key: where its bytes start} and the name of the pickle member."""
    pkl = [i.filename for i in archive.infolist() if i.filename.endswith("/data.pkl")]
    if len(pkl) != 1:
        raise KeyError("no data.pkl member")
    prefix = pkl[0][: -len("data.pkl")] + "data/"
    records = {}
    with open(file, "rb") as f:
        for info in archive.infolist():
            if not info.filename.startswith(prefix):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise KeyError(f"compressed member {info.filename}")
            header = os.pread(f.fileno(), 30, info.header_offset)
            name_len = int.from_bytes(header[26:28], "little")
            extra_len = int.from_bytes(header[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            records[info.filename[len(prefix) :]] = _Storage(file, start, "u1", info.file_size)
    return records, pkl[0]
