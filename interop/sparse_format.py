"""Sparse adapter files: `adapter_config.json` + `adapter_model.safetensors`.

In the spirit of peft's layout: for every tuned weight, `<hf name>.sparse_indices` (int32,
sorted, flat positions in the Hugging Face tensor's own layout, so a PyTorch user can
apply it with `weight.view(-1)[indices] += values`) and `<hf name>.sparse_values` (fp32).
The config records how the entries were chosen and a fingerprint of the base weights, so
an adapter is never merged into a base it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from interop.checkpoints.hf import read_json_object, read_tensors, write_tensors
from interop.errors import UserError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
INDICES, VALUES = ".sparse_indices", ".sparse_values"


def fingerprint(names: Iterable[str], get: Callable[[str], np.ndarray]) -> str:
    """sha256 over every base tensor's name, shape, dtype and bytes, in name order;
    `get(name)` reads one tensor, so only one is in memory at a time."""
    digest = hashlib.sha256()
    for name in sorted(names):
        array = get(name)
        digest.update(f"{name}|{array.shape}|{array.dtype}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def write_adapter(
    dst: Path, deltas: Mapping[str, tuple[np.ndarray, np.ndarray]], config: dict
) -> None:
    """Write {hf name: (indices, values)} and the adapter config into the directory `dst`."""
    tensors = {}
    for name, (indices, values) in deltas.items():
        order = np.argsort(indices, kind="stable")
        tensors[name + INDICES] = np.ascontiguousarray(indices[order].astype(np.int32))
        tensors[name + VALUES] = np.ascontiguousarray(values[order].astype(np.float32))
    write_tensors(tensors, dst / WEIGHTS)
    (dst / CONFIG).write_text(json.dumps({"adapter_type": "sparse", **config}, indent=2) + "\n")


def read_adapter(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(config, {hf name: (indices, values)})."""
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise UserError(f"{path}: not a sparse adapter (needs {CONFIG} and {WEIGHTS})")
    config = read_json_object(path / CONFIG)
    tensors = read_tensors(path / WEIGHTS)
    names = sorted(k[: -len(INDICES)] for k in tensors if k.endswith(INDICES))
    return config, {n: (tensors[n + INDICES], tensors[n + VALUES]) for n in names}


def checked_adapter(
    adapter: Path, base: Path, base_fp: str
) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`read_adapter(adapter)`, refused unless it was trained on the base `base`, whose
    `fingerprint` is `base_fp`."""
    config, deltas = read_adapter(adapter)
    if base_fp != config.get("base_fingerprint"):
        raise UserError(
            f"{adapter}: trained on another base model than {base} (base_fingerprint differs)"
        )
    return config, deltas


def merge_into(base: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """base + scatter_add(indices, values), in the base's dtype (what training computed)."""
    flat = np.array(base, copy=True).reshape(-1)
    flat[indices] = flat[indices] + values.astype(base.dtype)
    return flat.reshape(base.shape)
