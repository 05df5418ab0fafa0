"""Declarative name tables between our parameter paths and Hugging Face tensor names.

Each model family keeps one `NameTable` beside its model: rows of (our path, HF name,
transform), where `{i}` stands for a layer index. Transforms are exact re-layouts
(transpose, reshape), so converting in either direction never changes a bit. Conversion
works on numpy arrays one tensor at a time and checks every shape against the model that
the HF config describes, so a wrong checkpoint fails with the tensor's name, not deep
inside a forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from interop.errors import UserError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    """How an HF tensor's layout differs from ours; `kind` is identity, transpose or merge."""

    kind: str = "identity"
    merged: int = 0  # merge: how many trailing dims of ours form HF's last dim

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "transpose":
            return np.ascontiguousarray(x.T)
        if self.kind == "merge":
            return x.reshape(self.hf_shape(x.shape))
        return x

    def to_ours(self, x: np.ndarray, our_shape: Shape) -> np.ndarray:
        if self.kind == "transpose":
            return np.ascontiguousarray(x.T)
        if self.kind == "merge":
            return x.reshape(our_shape)
        return x

    def hf_flat_index(self, indices: np.ndarray, our_shape: Shape) -> np.ndarray:
        """Where our flat positions `indices` lie in the HF tensor's flat layout."""
        if self.kind == "transpose":
            rows, cols = np.divmod(indices.astype(np.int64), our_shape[1])
            return (cols * our_shape[0] + rows).astype(indices.dtype)
        return indices  # identity and merge keep the memory order

    def ours_flat_index(self, indices: np.ndarray, our_shape: Shape) -> np.ndarray:
        """Where the HF tensor's flat positions `indices` lie in our flat layout."""
        if self.kind == "transpose":
            cols, rows = np.divmod(indices.astype(np.int64), our_shape[0])
            return (rows * our_shape[1] + cols).astype(indices.dtype)
        return indices

    def hf_slice(
        self, index: tuple[slice, ...], our_shape: Shape
    ) -> tuple[tuple[slice, ...], Callable[[np.ndarray], np.ndarray]]:
        """The block of the HF tensor that holds our slice `index`, and how to turn that
        block into our slice: a device's shard is read without the rest of the tensor."""
        bounds = [s.indices(n)[:2] for s, n in zip(index, our_shape, strict=True)]
        if self.kind == "transpose":
            return tuple(reversed(index)), lambda x: np.ascontiguousarray(x.T)
        if self.kind != "merge":
            return tuple(index), lambda x: x
        head = len(our_shape) - self.merged
        rest = int(np.prod(our_shape[head + 1 :]))
        start, stop = bounds[head]
        block = (*index[:head], slice(start * rest, stop * rest))
        inner = (slice(None),) * (head + 1) + tuple(index[head + 1 :])

        def to_ours(x: np.ndarray) -> np.ndarray:
            return x.reshape(*x.shape[:head], stop - start, *our_shape[head + 1 :])[inner]

        return block, to_ours

    def hf_shape(self, our_shape: Shape) -> Shape:
        if self.kind == "transpose":
            return tuple(reversed(our_shape))
        if self.kind == "merge":
            head = our_shape[: len(our_shape) - self.merged]
            return (*head, int(np.prod(our_shape[len(head) :])))
        return tuple(our_shape)


IDENTITY = Transform()
TRANSPOSE = Transform("transpose")


def merge_tail(dims: int) -> Transform:
    """Our last `dims` dimensions are one dimension in HF (e.g. GPT-2's fused q/k/v)."""
    return Transform("merge", dims)


@dataclass(frozen=True)
class Rule:
    ours: str
    hf: str
    transform: Transform = IDENTITY


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


@dataclass(frozen=True)
class NameTable:
    """One family's mapping; `base_prefix` is what bare base-model checkpoints omit."""

    rules: tuple[Rule, ...]
    base_prefix: str = ""
    ignored: tuple[str, ...] = ()
    _ours: tuple[re.Pattern, ...] = field(init=False, repr=False)
    _hf: tuple[re.Pattern, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ours", tuple(_pattern(r.ours) for r in self.rules))
        object.__setattr__(self, "_hf", tuple(_pattern(r.hf) for r in self.rules))

    def to_hf_name(self, path: str) -> tuple[str, Transform]:
        for rule, pat in zip(self.rules, self._ours, strict=True):
            m = pat.match(path)
            if m:
                return rule.hf.format(**m.groupdict()), rule.transform
        raise KeyError(f"no Hugging Face name for parameter {path}")

    def to_our_path(self, hf_name: str) -> tuple[str, Transform] | None:
        """Our path for an HF name (with or without the base prefix), None if ignored."""
        if any(re.fullmatch(p, hf_name) for p in self.ignored):
            return None
        for candidate in (hf_name, self.base_prefix + hf_name):
            for rule, pat in zip(self.rules, self._hf, strict=True):
                m = pat.match(candidate)
                if m:
                    return rule.ours.format(**m.groupdict()), rule.transform
        raise UserError(f"unexpected tensor {hf_name} (not a parameter of this model)")


def _ours_for(
    table: NameTable, name: str, shape: Shape, expected: Mapping[str, Shape], source: str
) -> tuple[str, Transform] | None:
    """(our path, transform) of the HF tensor `name` with `shape`, checked against the
    model's `expected` shapes; None for a tensor the table ignores."""
    try:
        found = table.to_our_path(name)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    if found is None:
        return None
    path, transform = found
    if path not in expected:
        raise UserError(f"{source}: unexpected tensor {name} (not in this model's config)")
    want = transform.hf_shape(expected[path])
    if tuple(shape) != want:
        raise UserError(f"{source}: tensor {name} has shape {tuple(shape)}, expected {want}")
    return path, transform


def _check_complete(
    table: NameTable, seen: Iterable[str], expected: Mapping[str, Shape], source: str
) -> None:
    seen = set(seen)
    missing = [table.to_hf_name(p)[0] for p in expected if p not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: missing tensor {missing[0]}{more}")


def hf_to_ours(
    table: NameTable,
    tensors: Iterable[tuple[str, np.ndarray]],
    expected: Mapping[str, Shape],
    source: str,
) -> Iterator[tuple[str, np.ndarray]]:
    """Rename and re-lay HF tensors into our paths, one at a time, checking names and shapes.

    Missing tensors are reported once the input is exhausted.
    """
    seen: set[str] = set()
    for name, array in tensors:
        found = _ours_for(table, name, array.shape, expected, source)
        if found is not None:
            path, transform = found
            seen.add(path)
            yield path, transform.to_ours(array, expected[path])
    _check_complete(table, seen, expected, source)


def hf_layout(
    table: NameTable,
    shapes: Mapping[str, Shape],
    expected: Mapping[str, Shape],
    source: str,
) -> dict[str, tuple[str, Transform]]:
    """{our path: (stored HF name, transform)} from the stored tensors' names and shapes
    alone, with the checks of `hf_to_ours`; nothing is read."""
    layout = {}
    for name, shape in shapes.items():
        found = _ours_for(table, name, shape, expected, source)
        if found is not None:
            layout[found[0]] = (name, found[1])
    _check_complete(table, layout, expected, source)
    return layout


def ours_to_hf(
    table: NameTable, state: Mapping[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray]]:
    """Our (path, array) pairs as HF (name, array) pairs, one tensor at a time."""
    for path, array in state.items():
        name, transform = table.to_hf_name(path)
        yield name, transform.to_hf(np.asarray(array))
