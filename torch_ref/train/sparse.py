"""Sparse fine-tuning: trained delta values over frozen base weights.

For each tensor an adapter names, the owning module's weight becomes a parametrization
(`torch.nn.utils.parametrize`): the frozen base (`parametrizations.<name>.original`)
plus `scatter_add(indices, values)` on its flat view, with `values` the only trainable
parameter (fp32) and `indices` a buffer in the HF tensor's own flat layout, the layout
of the adapter file. Every other parameter is frozen, so DeepSpeed's optimizer (the only
one) holds state for the values alone, as the JAX side's optax state does.

Weight decay acts on the values (as `SparseTraining.decay_mask`), and
`sparse.regularization` adds reg_weight * sum|v| (l1) or sum v^2 (l2) over all values;
`penalty` returns it for the loop to add once per optimizer step (see `loop`). It reads
the values outside any module's forward, where ZeRO-3 would have released them, so under
ZeRO-3 the values stay whole on every rank (`penalty_numel` sets DeepSpeed's
`stage3_param_persistence_threshold`); their optimizer state is still partitioned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

from interop.config import RunConfig
from interop.errors import UserError
from interop.sparse_format import merge_into, write_adapter


class SparseDelta(torch.nn.Module):
    """weight -> weight + scatter_add(indices, values) on the flat view."""

    def __init__(self, indices: np.ndarray, values: np.ndarray):
        super().__init__()
        self.register_buffer("indices", torch.from_numpy(indices.astype(np.int64)))
        self.values = torch.nn.Parameter(torch.from_numpy(values.astype(np.float32)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(-1).index_add(0, self.indices, self.values.to(weight.dtype))
        return flat.view_as(weight)


def check_supported(cfg: RunConfig, has_adapter: bool) -> None:
    """Refuse selection without an adapter: the reference trains given index sets only."""
    if not has_adapter:
        raise UserError(
            f"sparse.method: {cfg.sparse.method} without an adapter; the PyTorch reference "
            "does not select entries itself: start from a sparse adapter (model.path) that "
            "holds the index sets (jax-sft parity makes one)"
        )


def attach(model: torch.nn.Module, deltas: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Freeze `model` and give each named weight its trainable delta values."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name, (indices, values) in deltas.items():
        owner, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(owner)
            weight = getattr(module, attr)
        except AttributeError:
            raise UserError(f"sparse adapter: tensor {name} is not in the base model") from None
        if indices.size and (indices.min() < 0 or indices.max() >= weight.numel()):
            raise UserError(f"sparse adapter: indices of {name} fall outside its {weight.shape}")
        parametrize.register_parametrization(module, attr, SparseDelta(indices, values))


def delta_modules(model: torch.nn.Module) -> Iterator[tuple[str, SparseDelta]]:
    """(HF weight name, its SparseDelta) for every sparse weight of `model`."""
    for name, module in model.named_modules():
        if isinstance(module, SparseDelta):
            owner, _, rest = name.partition(".parametrizations.")
            yield f"{owner}.{rest.rpartition('.')[0]}", module


def penalty(model: torch.nn.Module, cfg: RunConfig) -> torch.Tensor | None:
    """reg_weight * (sum |v| or sum v^2) over every delta value; None when off."""
    s = cfg.sparse
    if not penalty_numel(model, cfg):
        return None
    values = [m.values for _, m in delta_modules(model)]
    if s.regularization == "l1":
        # |v| with subgradient 0 at 0 (torch's abs), as the JAX side: an untouched delta
        # is not pushed off zero by the penalty.
        total = sum(v.abs().sum() for v in values)
    else:
        total = sum(v.square().sum() for v in values)
    return s.reg_weight * total


def penalty_numel(model: torch.nn.Module, cfg: RunConfig) -> int:
    """The largest delta vector the penalty reads (0 without a penalty)."""
    if cfg.sparse.regularization == "none" or cfg.sparse.reg_weight == 0:
        return 0
    return max((m.values.numel() for _, m in delta_modules(model)), default=0)


def deltas(model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF name: (indices, values)} as numpy."""
    return {
        name: (m.indices.numpy().astype(np.int32), m.values.detach().float().numpy())
        for name, m in delta_modules(model)
    }


def merge(model: torch.nn.Module) -> None:
    """Remove the parametrizations, leaving base + delta in each weight (in its dtype,
    rounded once, as `interop.sparse_format.merge_into` computes it)."""
    found = deltas(model)
    for name, (indices, values) in found.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        weight = getattr(module, attr)
        merged = merge_into(weight.detach().numpy(), indices, values)
        with torch.no_grad():
            weight.copy_(torch.from_numpy(merged))


def export_adapter(
    dst: Path, model: torch.nn.Module, cfg: RunConfig, base: str, base_fp: str | None
) -> None:
    """The trained deltas as a sparse adapter with the JAX side's config keys."""
    s = cfg.sparse
    config = {
        "method": s.method,
        "density": s.density,
        "num_tunable": s.num_tunable,
        "target": s.target,
        "base_model": base,
        "base_fingerprint": base_fp,
    }
    write_adapter(dst, deltas(model), config)
