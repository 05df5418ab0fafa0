"""Training checkpoints with Orbax: asynchronous, atomic, the last K kept; tags as in DeepSpeed.

Orbax writes each step into a temporary directory and renames it only once complete,
so a process killed mid-write leaves no checkpoint that loads as valid; `latest_step`
sees only finished ones. A checkpoint holds the whole train state (parameters, optimizer
moments, step, RNG) plus a small JSON record; the data position needs nothing more,
because the batch at step N is a pure function of (seed, N).

Untagged saves are steps of the directory's manager (named by their step number, the
last `keep` kept); a tagged save (`engine.save_checkpoint(dir, tag="best")`) is its own
directory `dir/tag`, written synchronously, and the file `dir/latest` then names it, as
DeepSpeed's does. Loading without a tag takes what `latest` names, else the newest step.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from interop.errors import UserError
from jax_sft.core.step import TrainState

LATEST = "latest"


def _args(state, record) -> ocp.args.Composite:
    return ocp.args.Composite(state=state, record=record)


class Checkpoints:
    def __init__(self, directory: Path, keep: int):
        self.directory = directory.absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def drop_from(self, step: int) -> int | None:
        """Delete the steps from `step` on (once written); the newest step left."""
        self.manager.wait_until_finished()
        for found in self.manager.all_steps():
            if found >= step:
                self.manager.delete(found)
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, record: dict, tag: str | None = None) -> Path:
        """Start writing (untagged: returns once the state has been copied off the device;
        tagged: once it is on disk); where it goes."""
        args = _args(ocp.args.StandardSave(state), ocp.args.JsonSave(record))
        if tag is None:
            self.manager.save(step, args=args)
            return self.path_of(step)
        if "/" in tag or tag in ("", ".", "..", LATEST) or tag.isdigit():
            raise UserError(f"tag: {tag!r} cannot name a checkpoint directory beside step numbers")
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
            ckpt.save(self.directory / tag, args, force=True)
        (self.directory / LATEST).write_text(tag)
        return self.directory / tag

    def find(self, tag: str | None) -> int | str | None:
        """The checkpoint to load: `tag`, else what `latest` names, else the newest step."""
        if tag is None and (self.directory / LATEST).is_file():
            tag = (self.directory / LATEST).read_text().strip()
        if tag is None:
            return self.latest_step()
        if tag.isdigit() and int(tag) in self.manager.all_steps():
            return int(tag)
        if not (self.directory / tag).is_dir():
            raise UserError(f"tag: no checkpoint {tag!r} in {self.directory}")
        return tag

    def path_of(self, found: int | str) -> Path:
        return self.directory / str(found)

    def restore(self, found: int | str, like: TrainState) -> tuple[TrainState, dict]:
        """The state saved as `found` (a step or a tag), laid out like `like` (whatever
        mesh it was saved on), and its record."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        args = _args(ocp.args.StandardRestore(abstract), ocp.args.JsonRestore())
        if isinstance(found, int):
            out = self.manager.restore(found, args=args)
        else:
            with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
                out = ckpt.restore(self.directory / found, args)
        return out.state, out.record

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
