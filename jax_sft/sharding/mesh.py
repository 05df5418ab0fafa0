"""The device mesh: axes `data`, `fsdp`, `tensor`, sized from `parallel.*` (-1 = the rest).

`data` and `fsdp` are both data-parallel: each holds a slice of the batch. They differ
in what they do to state: `fsdp` always shards parameters (that is what the axis is for),
while `data` shards them only at ZeRO-3; see `placement`. `tensor` splits attention heads
and MLP columns.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from interop.config import ParallelConfig
from interop.errors import UserError

AXES = ("data", "fsdp", "tensor")
DATA_AXES = ("data", "fsdp")


def mesh_shape(parallel: ParallelConfig, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes: with a -1 axis they use every device, without one the
    first data x fsdp x tensor devices."""
    sizes = [parallel.data, parallel.fsdp, parallel.tensor]
    named = ", ".join(f"{a}={s}" for a, s in zip(AXES, sizes, strict=True))
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise UserError(f"parallel: {named} does not divide the {n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) > n_devices:
        raise UserError(f"parallel: {named} needs {math.prod(sizes)} devices, found {n_devices}")
    return tuple(sizes)


def make_mesh(parallel: ParallelConfig, devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(parallel, len(devices))
    used = np.asarray(devices[: math.prod(shape)]).reshape(shape)
    return Mesh(used, AXES, axis_types=(AxisType.Auto,) * 3)


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_heads(hf_config: dict, mesh: Mesh) -> None:
    """Tensor parallelism splits whole heads: `tensor` must divide both head counts."""
    tensor = mesh.shape["tensor"]
    heads = hf_config.get("num_attention_heads") or hf_config.get("n_head")
    kv = hf_config.get("num_key_value_heads") or heads
    for name, count in (("attention heads", heads), ("key/value heads", kv)):
        if count % tensor:
            raise UserError(f"parallel.tensor: {tensor} does not divide the model's {count} {name}")
