"""Several processes, one mesh: `jax.distributed` set up from flags or the environment.

Where to find the coordinator, how many processes and which one this is come from the
command-line flags, else JAX's variables (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`), else torchrun's (`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`), so
a DeepSpeed user's launcher works unchanged. On the CPU, cross-process collectives go
through gloo. It must run before JAX touches a device.
"""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

from interop.errors import UserError


def settings(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[str, int, int] | None:
    """(coordinator address, process count, process id), or None for a single process."""
    env = os.environ
    if coordinator is None and "JAX_COORDINATOR_ADDRESS" in env:
        coordinator = env["JAX_COORDINATOR_ADDRESS"]
        num_processes = num_processes or int(env.get("JAX_NUM_PROCESSES", "0")) or None
        process_id = process_id if process_id is not None else _int(env.get("JAX_PROCESS_ID"))
    if coordinator is None and "MASTER_ADDR" in env and "WORLD_SIZE" in env:
        coordinator = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '29500')}"
        num_processes = num_processes or int(env["WORLD_SIZE"])
        process_id = process_id if process_id is not None else _int(env.get("RANK"))
    if coordinator is None or (num_processes or 1) == 1:
        return None
    if process_id is None:
        raise UserError("--process-id: needed with several processes (or set JAX_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id: {process_id} is not in 0..{num_processes - 1}")
    return coordinator, num_processes, process_id


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Join the other processes if there are any (once); True when running multi-process."""
    if jax.distributed.is_initialized():
        return True
    found = settings(coordinator, num_processes, process_id)
    if found is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(found[0], num_processes=found[1], process_id=found[2])
    return True


def is_main() -> bool:
    """Process 0 logs, prints and writes exports."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def share_int(value: int) -> int:
    """Process 0's `value`, on every process."""
    if jax.process_count() == 1:
        return value
    import numpy as np

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def to_host(array: jax.Array):
    """The whole value of a (possibly sharded across processes) array, on this host."""
    import numpy as np

    if array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
