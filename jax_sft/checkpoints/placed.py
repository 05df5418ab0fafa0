"""A model checkpoint loaded straight into its final placement on the mesh.

Loading never gathers the model anywhere: each parameter goes from its file to the
devices that hold it, one tensor at a time. For a Hugging Face directory, each device's
slice of a tensor is read on its own (safetensors reads a block without the rest of the
tensor; the name table maps our slice to the HF block, transposes and fused q/k/v
included); for an Orbax directory, Orbax restores each tensor into its sharding. So each
process reads only what its own devices hold, a device never holds more than its share
(ZeRO-3 on 8 devices: 1/8 of the model), and host memory stays near one tensor. A tensor
that must change as a whole first (a grown vocabulary, an adapter merged in: `patches`)
is read whole, changed, then sliced; replicated tensors are read once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from interop.checkpoints.formats import ORBAX_PARAMS, detect_format
from interop.checkpoints.hf import HFCheckpointReader, read_hf_config
from interop.checkpoints.sparse_bitmask import DecodedSparse, dense_config
from interop.errors import UserError
from interop.sparse_format import fingerprint
from jax_sft.checkpoints.orbax_io import nest
from jax_sft.models import registry, stacked
from jax_sft.models.hf_names import hf_layout

Patch = Callable[[np.ndarray], np.ndarray]


class TensorSource:
    """A model directory's parameters in our layout and stored dtype, by dotted path."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.format = detect_format(self.path)
        if self.format.endswith("adapter"):
            raise UserError(f"{self.path}: an adapter, not a model")
        self.config = read_hf_config(self.path)
        if self.format == "sparse":
            self.config = dense_config(self.config)
        registry.family_of(self.config, f"{self.path / 'config.json'}")
        self.table = registry.name_table(self.config)
        self.shapes = registry.expected_shapes(self.config)
        if self.format in ("hf", "sparse"):
            self._reader = (
                HFCheckpointReader(self.path) if self.format == "hf" else DecodedSparse(self.path)
            )
            stored = {n: self._reader.shape(n) for n in self._reader.names()}
            self._layout = hf_layout(self.table, stored, self.shapes, str(self.path))
            self._dtypes = {p: self._reader.dtype(n) for p, (n, _) in self._layout.items()}
        else:
            self._orbax = (self.path / ORBAX_PARAMS).absolute()
            with ocp.StandardCheckpointer() as ckpt:
                meta = ckpt.metadata(self._orbax).item_metadata.tree
            found = {".".join(k): m for k, m in _flat_keys(meta)}
            for p, m in found.items():
                if p not in self.shapes or tuple(m.shape) != self.shapes[p]:
                    raise UserError(f"{self.path}: parameter {p} has shape {tuple(m.shape)}")
            missing = sorted(set(self.shapes) - set(found))
            if missing:
                raise UserError(f"{self.path}: missing parameter {missing[0]}")
            self._dtypes = {p: np.dtype(m.dtype) for p, m in found.items()}

    def dtype(self, path: str) -> np.dtype:
        return self._dtypes[path]

    def read(self, path: str) -> np.ndarray:
        """One whole tensor, in our layout and its stored dtype."""
        if self.format != "orbax":
            name, transform = self._layout[path]
            return transform.to_ours(self._reader.get(name), self.shapes[path])
        target = {path: np.empty(self.shapes[path], self._dtypes[path])}
        args = {path: ocp.RestoreArgs(restore_type=np.ndarray)}
        return self._restore(target, args)

    def place(self, path: str, sharding: jax.sharding.Sharding, dtype: np.dtype) -> jax.Array:
        """The tensor laid out by `sharding` in `dtype`, reading only this process's slices."""
        shape = self.shapes[path]
        if self.format == "orbax":
            target = {path: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)}
            args = {path: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=shape, dtype=dtype)}
            return self._restore(target, args)
        read: dict[tuple, np.ndarray] = {}  # a slice several devices hold is read once

        def slice_of(index: tuple[slice, ...]) -> np.ndarray:
            key = tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=True))
            if key not in read:
                read[key] = self.block(path, index, dtype)
            return read[key]

        return jax.make_array_from_callback(shape, sharding, slice_of)

    def block(self, path: str, index: tuple[slice, ...], dtype: np.dtype) -> np.ndarray:
        """Our slice `index` of one tensor, in `dtype`; from an HF file only that block
        is read."""
        if self.format == "orbax":
            return self.read(path)[index].astype(dtype, copy=False)
        name, transform = self._layout[path]
        hf_index, to_ours = transform.hf_slice(index, self.shapes[path])
        return to_ours(self._reader.get_slice(name, hf_index)).astype(dtype, copy=False)

    def _restore(self, target: dict, args: dict):
        with ocp.PyTreeCheckpointer() as ckpt:
            out = ckpt.restore(
                self._orbax,
                args=ocp.args.PyTreeRestore(
                    item=nest(target), restore_args=nest(args), partial_restore=True
                ),
            )
        return dict(_flat_keys(out))[tuple(next(iter(target)).split("."))]

    def close(self) -> None:
        """Unmap the weight files: the pages a load touched stay resident while mapped
        (closed before the optimizer state is allocated, a 52M model's setup peaks 200 MB
        lower). A later read opens them again."""
        if self.format == "hf":
            self._reader.close()

    @functools.cached_property
    def _fingerprint(self) -> str:
        names = {self.table.to_hf_name(p)[0]: p for p in self.shapes}

        def hf_tensor(name: str) -> np.ndarray:
            path = names[name]
            return self.table.to_hf_name(path)[1].to_hf(self.read(path))

        return fingerprint(names, hf_tensor)

    def fingerprint(self) -> str:
        """`interop.sparse_format.fingerprint` of the model over its HF-named tensors,
        read one at a time (and only once)."""
        return self._fingerprint


def _flat_keys(tree: Mapping, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flat_keys(value, (*prefix, str(key)))
        else:
            yield (*prefix, str(key)), value


def load_placed(
    source: TensorSource,
    abstract: Mapping,
    shardings: Mapping,
    patches: Mapping[str, list[Patch]] | None = None,
) -> dict:
    """The nested parameter tree shaped like `abstract` (ShapeDtypeStructs of the final
    shapes and dtypes), each leaf placed by `shardings`; `patches` change whole tensors
    (in their stored dtype, in order) before they are placed."""
    patches = patches or {}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    sharding_leaves = jax.tree.leaves(shardings)
    placed = []
    for (key_path, want), sharding in zip(leaves, sharding_leaves, strict=True):
        path = registry.path_str(tuple(k.key for k in key_path))
        if stacked.is_stacked_path(path):
            array = _place_stacked(source, path, want, sharding, patches)
        elif path in patches:
            host = source.read(path)
            for patch in patches[path]:
                host = patch(host)
            host = host.astype(want.dtype, copy=False)
            array = jax.make_array_from_callback(want.shape, sharding, lambda i, h=host: h[i])
        else:
            array = source.place(path, sharding, want.dtype)
        if tuple(array.shape) != tuple(want.shape):
            raise UserError(f"{source.path}: parameter {path} has shape {array.shape}")
        placed.append(array)
    return jax.tree_util.tree_unflatten(treedef, placed)


def _patched(source: TensorSource, path: str, patches: list[Patch]) -> np.ndarray:
    host = source.read(path)
    for patch in patches:
        host = patch(host)
    return host


def _place_stacked(
    source: TensorSource,
    path: str,
    want: jax.ShapeDtypeStruct,
    sharding: jax.sharding.Sharding,
    patches: Mapping[str, list[Patch]],
) -> jax.Array:
    """A stacked leaf (`models.stacked`) from its per-layer tensors: each device's block
    is built layer by layer from the blocks it holds of each."""
    layers = [stacked.per_layer_path(path, i) for i in range(want.shape[0])]

    def layer_block(name: str, index: tuple[slice, ...]) -> np.ndarray:
        if name in patches:
            return _patched(source, name, patches[name])[index].astype(want.dtype, copy=False)
        return source.block(name, index, want.dtype)

    read: dict[tuple, np.ndarray] = {}  # a block several devices hold is read once

    def block(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple(s.indices(n)[:2] for s, n in zip(index, want.shape, strict=True))
        if key not in read:
            rows = range(*index[0].indices(want.shape[0]))
            read[key] = np.stack([layer_block(layers[i], index[1:]) for i in rows])
        return read[key]

    return jax.make_array_from_callback(want.shape, sharding, block)
