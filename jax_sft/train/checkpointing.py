"""Training checkpoints with Orbax: asynchronous, atomic, the last K kept.

Orbax writes each step into a temporary directory and renames it only once complete,
so a process killed mid-write leaves no checkpoint that loads as valid; `latest_step`
sees only finished ones. A checkpoint holds the whole train state (parameters, optimizer
moments, step, RNG) plus a small JSON record; the data position needs nothing more,
because the batch at step N is a pure function of (seed, N).
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jax_sft.train.step import TrainState


class Checkpoints:
    def __init__(self, directory: Path, keep: int):
        self.manager = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, record: dict) -> None:
        """Start writing; returns once the state has been copied off the device."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
        )

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """The state saved at `step`, laid out like `like` (whatever mesh it was saved on)."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.record

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
