"""`jax_sft.initialize(...)`: DeepSpeed's `deepspeed.initialize`, on the JAX backend.

    engine, optimizer, dataloader, lr_scheduler = jax_sft.initialize(
        model="path/to/hf_dir", config="ds_config.json", training_data="data/train.json")
    for batch in dataloader:
        loss = engine(batch)
        engine.backward(loss)
        engine.step()

The arguments (DeepSpeed's and the founding document's) become a RunConfig in
`interop.initialize_args`, the same for `torch_ref.initialize`. The data loader yields
the run's micro-batches (each pass over it is the next epoch); the optimizer and the
schedule are views of the engine's, which steps them, as DeepSpeed's engine does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import optax

from interop.data.batches import Batches
from interop.errors import UserError
from interop.initialize_args import arguments, resolve
from jax_sft.sharding import distributed
from jax_sft.sharding.mesh import data_parallel_size, make_mesh
from jax_sft.train.ds_engine import DeepSpeedEngine
from jax_sft.train.run import model_source


class DataLoader:
    """Micro-batches of micro x data-parallel rows (numpy arrays), a pure function of
    (seed, epoch, index) like every batch of a run; `len()` is one epoch's count."""

    def __init__(self, batches: Batches):
        self.batches, self.epoch = batches, 0

    def __len__(self) -> int:
        return self.batches.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for i in range(len(self)):
            yield self.batches.batch(epoch * len(self) + i)


class Optimizer:
    """The run's AdamW (`transformation`, an optax chain without the learning rate) with
    DeepSpeed-style `param_groups` that follow the schedule; its state is the engine's."""

    def __init__(self, engine: DeepSpeedEngine):
        self.engine = engine
        self.transformation: optax.GradientTransformation = engine.optimizer

    @property
    def state(self):
        return self.engine.state["opt_state"]

    @property
    def param_groups(self) -> list[dict]:
        o = self.engine.cfg.optim
        common = {"betas": tuple(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
        return [{"lr": lr, **common} for lr in self.engine.get_lr()]

    def zero_grad(self) -> None:
        self.engine.zero_grad()


class LRScheduler:
    """The run's schedule (`interop.schedules`) as the engine steps it."""

    def __init__(self, engine: DeepSpeedEngine):
        self.engine = engine

    def get_lr(self) -> list[float]:
        return self.engine.get_lr()

    def get_last_lr(self) -> list[float]:
        return self.engine.get_lr()

    def state_dict(self) -> dict:
        return {"last_batch_iteration": self.engine.global_steps - 1}

    def step(self) -> None:
        raise UserError(
            "lr_scheduler.step(): the engine steps the schedule at each optimizer step "
            "(engine.step()); stepping it again would skip learning rates"
        )


def initialize(*args, **kwargs):
    """(engine, optimizer, dataloader, lr_scheduler) of a run, as DeepSpeed's `initialize`
    returns them; the arguments are described in `interop.initialize_args`."""
    named = arguments(args, kwargs)
    if named.get("dist_init_required") is not False:
        distributed.initialize()  # before anything touches a device
    resolved = resolve(named, lambda cfg: data_parallel_size(make_mesh(cfg.parallel)))
    cfg = resolved.cfg
    engine = DeepSpeedEngine(cfg, model_source(cfg), records=resolved.records)
    if engine.is_main:
        for note in [*resolved.notes, *engine.notes]:
            print(f"note: {note}", file=sys.stderr)
    micro_rows = cfg.train.micro_batch_size * data_parallel_size(engine.mesh)
    loader = DataLoader(engine.data.batches(micro_rows))
    return engine, Optimizer(engine), loader, LRScheduler(engine)
