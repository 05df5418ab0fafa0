"""ZeRO-0 checkpoints: the optimizer's parameters matched back to their names.

Without ZeRO, DeepSpeed saves the client optimizer's own `state_dict()` (bf16 runs wrap it
and add the fp32 masters, `fp32_groups`), whose parameters are numbered, not named.
Optimizers receive parameters in the module's order, filtered into groups (trainable
only; decay and no-decay), so each group is a subsequence of the module's parameters. We
accept a numbering only when its shapes embed in the module's order in exactly one way
(the earliest and the latest embedding agree) and the groups share no parameter;
otherwise the moments are unnamed and a 16-bit run's weights are its 16-bit copy, and
`notes` says so.
"""

from __future__ import annotations

import numpy as np

from interop.checkpoints.torch_pickle import StoredTensor
from interop.errors import UserError


def zero0_layout(ckpt, base: object | None) -> None:
    """Fill `ckpt` (a DeepSpeedCheckpoint) from its ZeRO-0 model states (`ckpt.model`)."""
    module: dict[str, StoredTensor] = ckpt.model["module"]
    buffers = set(ckpt.model.get("buffer_names") or [])
    params, aliases, seen = [], {}, {}
    for name, t in module.items():
        key = (t.storage.offset, t.storage_offset, t.shape)
        if key in seen:
            aliases[name] = seen[key]
        elif name not in buffers:
            seen[key] = name
            params.append(name)
    opt = ckpt.model.get("optimizer") or {}
    inner = opt.get("optimizer_state_dict", opt)
    state = inner.get("state") or {}
    groups = [list(g["params"]) for g in inner.get("param_groups") or []]
    masters = [t for g in opt.get("fp32_groups") or [] for t in g]
    bit16 = any(module[n].dtype in ("bfloat16", "<f2") for n in params)

    def shape_of(k: int) -> tuple | None:
        if masters:
            return masters[k].shape
        return state[k]["exp_avg"].shape if k in state else None

    named = _match(params, {n: module[n].shape for n in params}, groups, shape_of)
    if named is None:
        ckpt.notes.append(
            "ZeRO-0: the optimizer's parameters could not be matched to names "
            "unambiguously; no optimizer state, weights from the module"
        )
        for name in params:
            ckpt.shapes[name], ckpt.weights[name] = module[name].shape, module[name].read
    else:
        for k, name in named.items():
            ckpt.shapes[name] = module[name].shape
            ckpt.weights[name] = masters[k].read if bit16 and masters else module[name].read
            if k in state:
                ckpt.moments[name] = (state[k]["exp_avg"].read, state[k]["exp_avg_sq"].read)
        frozen_from_module(ckpt, [n for n in params if n not in ckpt.weights], base, bit16)
        kind = "the optimizer's fp32 masters" if bit16 and masters else "the module (fp32)"
        ckpt.notes.insert(0, f"ZeRO-0: trained weights from {kind}")
    for alias, target in aliases.items():
        ckpt.weights[alias], ckpt.shapes[alias] = ckpt.weights[target], ckpt.shapes[target]


def frozen_from_module(ckpt, names: list[str], base, bit16: bool) -> None:
    """Weights DeepSpeed kept only in `module` (frozen at ZeRO-0/1): exact in fp32 runs;
    from `base` in 16-bit runs, whose module copy lost the low bits."""
    module = ckpt.model["module"]
    for name in names:
        if bit16 and base is None:
            raise UserError(
                f"{ckpt.dir}: {name} is frozen and this 16-bit ZeRO-{ckpt.stage} "
                "run saved it only in 16 bits; pass --base with the weights of the "
                "model it was trained from"
            )
        ckpt.shapes[name] = tuple(module[name].shape)
        ckpt.weights[name] = (
            (lambda n=name: np.asarray(base.get(n), np.float32)) if bit16 else module[name].read
        )
    if names:
        where = "the base model" if bit16 else "the module's fp32 copy"
        ckpt.notes.append(f"{len(names)} frozen tensor(s) from {where}")


def _match(params: list[str], shapes: dict, groups: list[list[int]], shape_of) -> dict | None:
    """{optimizer index: name}, or None when the numbering is not unambiguous."""
    named: dict[int, str] = {}
    for group in groups:
        wanted = [shape_of(k) for k in group]
        if any(s is None for s in wanted):
            return None
        early = _embed(params, shapes, wanted)
        late = _embed(params[::-1], shapes, wanted[::-1])
        if early is None or late is None or early != late[::-1]:
            return None
        named.update(zip(group, early, strict=True))
    if len(set(named.values())) != len(named):
        return None
    return named


def _embed(params: list[str], shapes: dict, wanted: list) -> list[str] | None:
    """The earliest names of `params` whose shapes are `wanted`, in order."""
    out, i = [], 0
    for shape in wanted:
        while i < len(params) and tuple(shapes[params[i]]) != tuple(shape):
            i += 1
        if i == len(params):
            return None
        out.append(params[i])
        i += 1
    return out
