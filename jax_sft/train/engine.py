"""The training engine: a run's state, its jitted steps, evaluation, checkpoints, export.

`Engine` is what `setup` built plus behaviour: `train_step` is one optimizer step (the
mode's hooks around it), `evaluate` the eval loss, `save_checkpoint`/`load_checkpoint`
take DeepSpeed's arguments, and `fit` hands the engine to the loop both backends share
(`interop.loop`). Nothing in a step forces a host sync: metrics stay on the device until
the loop's logging interval. The engine knows the training mode only by its protocol.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from interop.checkpoints.hf_write import write_hf_checkpoint
from interop.config import RunConfig
from interop.loop import eval_result, fit
from interop.outputs import ensure_space, output_dir, write_json
from interop.schedules import learning_rate
from jax_sft.core.step import make_eval_step, make_train_step
from jax_sft.models import registry
from jax_sft.models.hf_names import ours_to_hf
from jax_sft.sharding.distributed import barrier, is_main, to_host
from jax_sft.sharding.placement import place_batch
from jax_sft.train.checkpointing import Checkpoints
from jax_sft.train.deepspeed_start import start_from_deepspeed
from jax_sft.train.setup import Setup, setup

MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)


class Engine(Setup):
    """One fine-tuning run on the JAX backend."""

    def __init__(
        self,
        cfg: RunConfig,
        model_dir: Path,
        *,
        base_dir: Path = Path("."),
        records: list | None = None,
    ):
        super().__init__(**vars(setup(cfg, model_dir, base_dir=base_dir, records=records)))
        self._step_fn = make_train_step(self.graphdef, self.optimizer, self.placement, self.mode)
        self._eval_step = make_eval_step(self.graphdef, self.placement, self.mode)
        self.global_steps = 0  # optimizer steps done
        self.resumed_from: Path | None = None
        self.is_main = is_main()
        self._checkpoints: dict[Path, Checkpoints] = {}

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    @property
    def vocab_size(self) -> int:
        return self.hf_config["vocab_size"]

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (the one schedule formula)."""
        return learning_rate(
            step, self.cfg.optim.learning_rate, self.cfg.schedule, self.total_steps
        )

    def train_step(self, batch: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """One optimizer step (on the run's own next global batch unless one is given);
        its metrics, still on the device."""
        step = self.global_steps
        batch = self.global_batch(step) if batch is None else batch
        lr = self.lr(step)
        self.mode.before_step(step, self.state, batch)
        self.state, metrics = self._step_fn(self.state, batch, np.float32(lr))
        self.global_steps += 1
        self.state = self.mode.after_step(self.global_steps, self.state)
        return {**metrics, "lr": lr}

    def host_metrics(self, metrics: list[dict]) -> list[dict]:
        return jax.device_get(metrics)

    def evaluate(self) -> dict[str, float]:
        """Eval loss and perplexity over the eval set (`interop.loop.eval_result`)."""
        if self.eval_batches is None:
            return {}
        rows = self.placement.rows
        found = [
            self._eval_step(self.state, place_batch(self.eval_batches.batch(i), rows))
            for i in range(self.eval_batches.steps_per_epoch)
        ]
        sums, counts = zip(*jax.device_get(found), strict=True)
        return eval_result(sums, counts, self.cfg.logging.style)

    # -- checkpoints, with DeepSpeed's arguments -------------------------------------------

    def _manager(self, directory: str | Path | None) -> Checkpoints:
        """The checkpoint directory (default: the run's own), opened on first use."""
        path = Path(directory) if directory is not None else self.out / "checkpoints"
        if path not in self._checkpoints:
            # One more than asked: the newest is not vouched for until the next loss is
            # known (`interop.loop`), and must not push out the last one that is.
            self._checkpoints[path] = Checkpoints(path, self.cfg.train.keep_checkpoints + 1)
        return self._checkpoints[path]

    def save_checkpoint(
        self, save_dir: str | Path | None = None, tag: str | None = None, client_state=None
    ) -> Path:
        """Save the whole state (asynchronously) as `tag` (default: the step number) in
        `save_dir` (default: OUTPUT_DIR/checkpoints); `client_state` is stored beside it."""
        record = {"step": self.global_steps, "client_state": client_state or {}}
        manager = self._manager(save_dir)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(self.state))
        ensure_space(manager.directory, nbytes, f"the checkpoint of step {self.global_steps}")
        return manager.save(self.global_steps, self.state, record, tag)

    def load_checkpoint(
        self, load_dir: str | Path | None = None, tag: str | None = None
    ) -> tuple[Path | None, dict]:
        """Restore `tag` (default: the latest) from `load_dir`, as DeepSpeed's engine does:
        (the path loaded, its client_state), or (None, {}) when there is none."""
        manager = self._manager(load_dir)
        found = manager.find(tag)
        if found is None:
            return None, {}
        self.state, record = manager.restore(found, self.state)
        self.global_steps = int(record["step"])
        return manager.path_of(found), record.get("client_state", {})

    def drop_checkpoints_from(self, step: int) -> int | None:
        """Remove the run's own checkpoints from `step` on; the newest step left."""
        return self._manager(None).drop_from(step)

    def restore_latest(self) -> int | None:
        """Resume from the run's own latest checkpoint, else from `train.resume_from`; the
        step reached (None: neither)."""
        path, _ = self.load_checkpoint()
        if path is not None:
            self.resumed_from = self.out / "checkpoints"
        elif self.cfg.train.resume_from:
            self.resumed_from = Path(self.cfg.train.resume_from)
            start_from_deepspeed(self, self.resumed_from)
        return None if self.resumed_from is None else self.global_steps

    def fit(self, printer=None) -> dict:
        """Train to the end (resuming from the latest checkpoint if there is one)."""
        return fit(self, printer)

    def close(self) -> None:
        """Finish pending checkpoint writes (even when training stops on an error)."""
        for manager in self._checkpoints.values():
            manager.close()
        self._checkpoints.clear()

    # -- what the run leaves behind, and what it costs -------------------------------------

    def export_adapter(self, dst: Path, *, overwrite: bool = True) -> bool:
        """The mode's adapter (sparse deltas, peft LoRA) as a directory; False for a mode
        without one. Every process takes part in gathering, process 0 writes."""
        tree = self.mode.adapter_tree(self.state)
        if tree is None:
            return False
        host = jax.tree.map(to_host, tree)
        if self.is_main:
            with output_dir(dst, overwrite=overwrite) as tmp:
                self.mode.write_adapter(tmp, host)
        barrier("export_adapter")
        return True

    def export_hf(self, dst: Path, *, overwrite: bool = True) -> None:
        """The trained model as a Hugging Face directory (weights in the param dtype), as
        the mode ships it, with the mode's reports (`pruning.json`) beside it; every
        process takes part in gathering, process 0 writes."""
        nbytes = sum(x.nbytes for x in jax.tree.leaves(self.state["params"]))
        ensure_space(dst.parent, nbytes, f"{dst.name}/")
        model = nnx.merge(self.graphdef, jax.jit(self.mode.params)(self.state))
        flat = registry.flat_state(model, to_host)
        tree = self.mode.export_tree(self.state)
        host = None if tree is None else jax.tree.map(to_host, tree)
        if self.is_main:
            config, tensors, reports = dict(self.hf_config), ours_to_hf(self.table, flat), {}
            if host is not None:  # the mode reshapes what it ships (pruning's cut)
                config, cut, reports = self.mode.shipped(config, dict(tensors), host)
                tensors = iter(cut.items())
            with output_dir(dst, overwrite=overwrite) as tmp:
                write_hf_checkpoint(tmp, tensors, config)
                self.tokenizer.save_pretrained(tmp)
            for name, report in reports.items():
                write_json(dst.parent / name, report)
        barrier("export_hf")

    def train_step_memory(self) -> dict[str, int]:
        """Per-device bytes of the compiled train step (XLA's `memory_analysis()`)."""
        batch = jax.eval_shape(lambda: self.global_batch(0))
        batch = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.placement.batch)
            for k, v in batch.items()
        }
        compiled = self._step_fn.lower(self.state, batch, np.float32(0.0)).compile()
        analysis = compiled.memory_analysis()
        return {field: int(getattr(analysis, field)) for field in MEMORY_FIELDS}
