"""DeepSpeed ZeRO 0-3 checkpoints read one tensor at a time: fp32 masters, Adam moments, step.

Where DeepSpeed keeps the fp32 master weights (the files: `deepspeed_files`):

- ZeRO-1/2: each optimizer parameter group is one flat fp32 vector, the group's
  parameters back to back in `param_shapes` order (plus `param_alignment_paddings` after
  each, when recorded), cut into one contiguous partition per rank; rank r's file holds
  `single_partition_of_fp32_groups[g]`, the last one without the group's tail padding.
  The Adam moments of group g on rank r (`base_optimizer_state`) cover the same range.
- ZeRO-3: every parameter is cut on its own: rank r holds elements
  [r*ceil(n/W), (r+1)*ceil(n/W)) of it (the last rank zero-padded), and a rank's
  `fp32_flat_groups` are those slices back to back, in `param_shapes` order.
- ZeRO-0: no partitions; `module` holds the weights (fp32 runs: the masters themselves;
  bf16 runs keep fp32 masters in the optimizer's `fp32_groups`).

Frozen parameters have no master copy: ZeRO-2/3 save them as `frozen_param_fragments`
(whole, or one slice per rank for ZeRO-3) in the compute dtype; ZeRO-0/1 only in
`module`. Tied parameters appear once, `shared_params` naming the aliases. Each tensor is
read from disk when asked (`torch_pickle.StoredTensor`), so memory stays near the
largest tensor whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from interop.checkpoints.deepspeed_files import rank_files, tag_dir
from interop.checkpoints.deepspeed_zero0 import frozen_from_module, zero0_layout
from interop.checkpoints.torch_pickle import StoredTensor, load
from interop.errors import UserError

Read = Callable[[], np.ndarray]


class _Flat:
    """Several 1-D stored tensors read as one vector."""

    def __init__(self, parts: list[StoredTensor]):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.numel for p in parts]).tolist()

    def read(self, start: int, count: int) -> np.ndarray:
        out, end = [], start + count
        for part, lo, hi in zip(self.parts, self.starts, self.starts[1:], strict=False):
            if lo < end and start < hi:
                first = max(start, lo) - lo
                out.append(part.read_flat(first, min(end, hi) - lo - first))
        got = np.concatenate(out) if out else np.zeros(0, np.float32)
        if got.size != count:
            raise UserError(f"{self.parts[0].storage.file}: partitions hold too few elements")
        return got


class DeepSpeedCheckpoint:
    """One tag of a DeepSpeed checkpoint directory. `base` (a reader with `get(name)`)
    supplies frozen weights that a 16-bit ZeRO-0/1 run did not keep in fp32."""

    def __init__(self, path: str | Path, tag: str | None = None, base: object | None = None):
        files = rank_files(tag_dir(path, tag))
        self.dir = files.dir
        models = [_states(f, "module") for f in files.model]
        optims = [_states(f, "optimizer_state_dict")["optimizer_state_dict"] for f in files.optim]
        self.model = models[0]
        self.global_steps = int(self.model.get("global_steps") or 0)
        self.weights: dict[str, Read] = {}
        self.moments: dict[str, tuple[Read, Read]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.notes: list[str] = []
        if not optims:
            self.stage, self.world_size = 0, 1
            zero0_layout(self, base)
        else:
            self.stage, self.world_size = _stage_and_world(files.optim, optims)
            trained = [
                (n, tuple(s)) for group in self.model["param_shapes"] for n, s in group.items()
            ]
            if self.stage == 3:
                self._zero3(trained, optims, models)
            else:
                self._zero12(optims)
            self._frozen(models, base, bool(files.bit16))
            self.notes.insert(
                0,
                f"fp32 master weights from the ZeRO-{self.stage} optimizer "
                f"partitions of {self.world_size} rank(s)",
            )
        for name in self.model.get("buffer_names") or []:
            self._whole(name, self.model["module"][name])
        for alias, target in (self.model.get("shared_params") or {}).items():
            if target in self.weights:
                self.weights[alias], self.shapes[alias] = self.weights[target], self.shapes[target]
        self.step = _adam_step(optims, self.model)

    def _whole(self, name: str, tensor: StoredTensor) -> None:
        self.weights[name], self.shapes[name] = tensor.read, tensor.shape

    def _zero12(self, optims: list[dict]) -> None:
        pads = optims[0].get("param_alignment_paddings")
        for g, group in enumerate(self.model["param_shapes"]):
            master = _Flat([o["single_partition_of_fp32_groups"][g] for o in optims])
            moments = [_Flat([_group_state(o, g)[k] for o in optims]) for k in _MOMENTS]
            offset = 0
            for i, (name, shape) in enumerate(group.items()):
                n = math.prod(shape)
                self._place(
                    name, tuple(shape), lambda f, o=offset, n=n: f.read(o, n), master, moments
                )
                offset += n + (pads[g][i] if pads else 0)
            if offset > master.starts[-1] + 2 * self.world_size:
                raise UserError(
                    f"{self.dir}: group {g}'s partitions hold {master.starts[-1]} "
                    f"elements, its parameters {offset}"
                )

    def _zero3(self, trained: list, optims: list[dict], models: list[dict]) -> None:
        ws = self.world_size
        master = [_Flat(list(o["fp32_flat_groups"])) for o in optims]
        groups = range(len(optims[0]["fp32_flat_groups"]))
        moments = [
            [_Flat([_group_state(o, g)[k] for g in groups]) for o in optims] for k in _MOMENTS
        ]
        offset = 0
        for name, shape in trained:
            n = math.prod(shape)
            part = math.ceil(n / ws)

            def gather(ranks: list[_Flat], o=offset, part=part, n=n) -> np.ndarray:
                return np.concatenate([r.read(o, part) for r in ranks])[:n]

            self._place(name, shape, gather, master, moments)
            offset += part
        if offset != master[0].starts[-1]:
            raise UserError(
                f"{self.dir}: rank 0 holds {master[0].starts[-1]} master elements, "
                f"its parameters' slices {offset}"
            )

    def _place(self, name: str, shape: tuple, read: Callable, master, moments) -> None:
        self.shapes[name] = shape
        self.weights[name] = lambda: read(master).reshape(shape)
        self.moments[name] = tuple(lambda m=m: read(m).reshape(shape) for m in moments)

    def _frozen(self, models: list[dict], base: object | None, bit16: bool) -> None:
        shapes = self.model.get("frozen_param_shapes") or {}
        fragments = [m.get("frozen_param_fragments") or {} for m in models]
        for name, shape in shapes.items():
            shape, n = tuple(shape), math.prod(shape)
            parts = [f[name] for f in fragments]
            self.shapes[name] = shape
            self.weights[name] = lambda p=parts, s=shape, n=n: np.concatenate(
                [t.read().reshape(-1) for t in p]
            )[:n].reshape(s)
        if shapes and bit16:
            self.notes.append(f"{len(shapes)} frozen tensor(s) as DeepSpeed saved them, in 16 bits")
        unsaved = [
            n
            for n in self.model["module"]
            if n not in self.shapes
            and n not in (self.model.get("shared_params") or {})
            and n not in (self.model.get("buffer_names") or [])
        ]
        frozen_from_module(self, unsaved, base, bit16)

    def names(self) -> list[str]:
        return list(self.weights)

    def get(self, name: str) -> np.ndarray:
        """One tensor in fp32 (integer buffers as stored), read from disk now."""
        if name not in self.weights:
            raise UserError(f"{self.dir}: no tensor named {name}")
        return self.weights[name]()

    def moments_of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(exp_avg, exp_avg_sq) of a trained parameter."""
        if name not in self.moments:
            raise UserError(f"{self.dir}: {name} has no optimizer state (frozen, or not found)")
        return tuple(read() for read in self.moments[name])


_MOMENTS = ("exp_avg", "exp_avg_sq")


def _states(file: Path, key: str) -> dict:
    state = load(file)
    if not isinstance(state, dict) or key not in state:
        raise UserError(f"{file}: not a DeepSpeed checkpoint file (no '{key}')")
    return state


def _stage_and_world(files: list[Path], optims: list[dict]) -> tuple[int, int]:
    stages = {int(o.get("zero_stage", -1)) for o in optims}
    stage = stages.pop()
    if stages or stage not in (1, 2, 3):
        raise UserError(f"{files[0]}: unknown ZeRO stage {stage} (we read 0, 1, 2 and 3)")
    for file, o in zip(files, optims, strict=True):
        count = o.get("partition_count")
        count = max(count) if isinstance(count, list) else count
        if isinstance(count, int) and count > len(files):
            missing = file.name.replace(
                f"zero_pp_rank_{files.index(file)}_", f"zero_pp_rank_{len(files)}_"
            )
            raise UserError(
                f"{file.parent}: the optimizer states file of rank {len(files)} is "
                f"missing ({missing}; the run had {count} ranks)"
            )
        if count != len(files):
            raise UserError(
                f"{file}: written by a run of {count} rank(s), but {len(files)} rank files are "
                "here (files from runs of different world sizes?)"
            )
    return stage, len(files)


def _group_state(optim: dict, g: int) -> dict:
    base = optim.get("base_optimizer_state", optim.get("optimizer_state_dict"))
    state = base[g] if isinstance(base, list) else base["state"][g]
    if not all(k in state for k in _MOMENTS):
        raise UserError("the optimizer state is not Adam's (no exp_avg/exp_avg_sq)")
    return state


def _adam_step(optims: list[dict], model: dict) -> int | None:
    """The optimizer's step count, as its state records it."""
    try:
        step = _group_state(optims[0], 0)["step"] if optims else None
    except (KeyError, IndexError, UserError):
        step = None
    if step is None:
        opt = model.get("optimizer") or {}
        states = (opt.get("optimizer_state_dict") or opt).get("state") or {}
        step = next(iter(states.values()), {}).get("step")
    if isinstance(step, StoredTensor):
        step = step.read().item()
    return None if step is None else int(step)
