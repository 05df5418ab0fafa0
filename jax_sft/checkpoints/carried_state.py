"""A run's weights and Adam state outside the run that made them, in our layout.

Two places hold them: a DeepSpeed checkpoint (fp32 masters, `exp_avg`/`exp_avg_sq`, its
step counts), and an Orbax model directory that `jax-sft convert DS_DIR DST --to orbax
--with-optimizer` wrote from one: the model as usual, plus `optimizer/` (the two moments as
Orbax trees keyed like the parameters) and `steps.json`. `train.resume_from` takes either
(`jax_sft.train.deepspeed_start`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from interop.errors import UserError
from jax_sft.checkpoints.deepspeed_convert import OpenedDeepSpeed, open_deepspeed_as
from jax_sft.checkpoints.orbax_io import flatten, nest, save_orbax_model
from jax_sft.checkpoints.placed import TensorSource
from jax_sft.models import registry

OPTIMIZER, STEPS = "optimizer", "steps.json"
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class CarriedState:
    global_steps: int  # optimizer steps the run had taken
    adam_count: int  # Adam's own step count (its bias correction)
    weight: Callable[[str], np.ndarray]  # our path -> fp32 array in our layout
    moments: Callable[[str], tuple[np.ndarray, np.ndarray]]  # our path -> (mu, nu)


def carried_state(config: dict, path: Path) -> CarriedState:
    """The state at `path` (either kind above) of the model `config` describes."""
    if (path / OPTIMIZER).is_dir():
        return _from_orbax(path)
    return _from_deepspeed(open_deepspeed_as(config, path))


def _from_deepspeed(opened: OpenedDeepSpeed) -> CarriedState:
    ckpt, expected = opened.ckpt, registry.expected_shapes(opened.config)
    frozen = sorted(n for n, _ in opened.layout.values() if n not in ckpt.moments)
    if frozen:
        raise UserError(
            f"{ckpt.dir}: {frozen[0]} was frozen in that run and has no Adam state; a dense "
            "run trains every parameter"
        )

    def ours(path_: str, array: np.ndarray) -> np.ndarray:
        return opened.layout[path_][1].to_ours(array, expected[path_])

    def moments(path_: str) -> tuple[np.ndarray, np.ndarray]:
        mu, nu = ckpt.moments_of(opened.layout[path_][0])
        return ours(path_, mu), ours(path_, nu)

    return CarriedState(
        ckpt.global_steps,
        ckpt.step if ckpt.step is not None else ckpt.global_steps,
        lambda p: ours(p, ckpt.get(opened.layout[p][0])),
        moments,
    )


def write_with_optimizer(opened: OpenedDeepSpeed, dst: Path, params: dict) -> None:
    """`dst` (existing) as an Orbax model of `params` (our layout) that carries the
    DeepSpeed run's Adam state and step counts."""
    save_orbax_model(dst, params, opened.config, opened.config_dir)
    state = _from_deepspeed(opened)
    trees = {key: {} for key in MOMENTS}
    for path in params:
        for key, array in zip(MOMENTS, state.moments(path), strict=True):
            trees[key][path] = array
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((dst / OPTIMIZER).absolute(), {k: nest(v) for k, v in trees.items()})
    steps = {"global_steps": state.global_steps, "adam_count": state.adam_count}
    (dst / STEPS).write_text(json.dumps(steps) + "\n")


def _from_orbax(path: Path) -> CarriedState:
    source = TensorSource(path)
    with ocp.StandardCheckpointer() as ckpt:
        trees = ckpt.restore((path / OPTIMIZER).absolute())
    flat = {key: flatten(trees[key]) for key in MOMENTS}
    steps = json.loads((path / STEPS).read_text())
    return CarriedState(
        int(steps["global_steps"]),
        int(steps["adam_count"]),
        lambda p: np.asarray(source.read(p), np.float32),
        lambda p: (np.asarray(flat["exp_avg"][p]), np.asarray(flat["exp_avg_sq"][p])),
    )
