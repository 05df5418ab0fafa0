"""DeepSpeed's engine calls on the JAX engine: `loss = engine(batch)`, `engine.backward(loss)`,
`engine.step()`, so a training loop written for DeepSpeed runs here unchanged.

JAX computes a loss and its gradients in one function, so `engine(batch)` does both and
the returned loss carries its micro-batch's gradients until `engine.backward(loss)` (or
`loss.backward()`) adds them to the accumulated ones; `engine.step()` applies them at
accumulation boundaries only, advances the schedule, and counts micro-steps otherwise,
as DeepSpeed's engine does. The arithmetic is DeepSpeed's (`jax_sft.core.micro_steps`):
the mean of per-micro-batch mean losses. Modes with step hooks (SpIEL) need whole
optimizer-step batches and are refused here; `train_batch()` runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from interop.config import RunConfig
from interop.errors import UserError
from jax_sft.core.micro_steps import make_micro_steps
from jax_sft.core.mode import TrainingMode
from jax_sft.sharding.mesh import data_parallel_size
from jax_sft.sharding.placement import place_batch
from jax_sft.train.engine import Engine


class MicroBatchLoss:
    """What `engine(batch)` returns: the micro-batch's loss (`float(loss)`, `loss.item()`),
    holding its gradients until they are accumulated."""

    def __init__(self, engine: DeepSpeedEngine, value: jax.Array, grads: dict):
        self.engine, self.value, self.grads = engine, value, grads

    def item(self) -> float:
        return float(self.value)

    def __float__(self) -> float:
        return self.item()

    def __format__(self, spec: str) -> str:
        return format(self.item(), spec)

    def __repr__(self) -> str:
        return f"MicroBatchLoss({self.item():.6g})"

    def backward(self) -> None:
        self.engine.backward(self)


class DeepSpeedEngine(Engine):
    """The engine `jax_sft.initialize` returns: `Engine` plus DeepSpeed's micro-step calls."""

    def __init__(self, cfg: RunConfig, model_dir: Path, **kwargs):
        super().__init__(cfg, model_dir, **kwargs)
        self.micro_steps = 0
        self._fns = make_micro_steps(
            self.graphdef,
            self.optimizer,
            self.placement,
            self.mode,
            data_parallel_size(self.mesh),
            cfg.train.gradient_accumulation_steps,
        )
        self._accumulated: dict | None = None

    def gradient_accumulation_steps(self) -> int:
        return self.cfg.train.gradient_accumulation_steps

    def is_gradient_accumulation_boundary(self) -> bool:
        """Whether the current micro-batch is the last of its optimizer step."""
        return (self.micro_steps + 1) % self.gradient_accumulation_steps() == 0

    def __call__(self, batch: dict) -> MicroBatchLoss:
        return self.forward(batch)

    def forward(self, batch: dict) -> MicroBatchLoss:
        """The micro-batch's loss, with its gradients (see the module docstring)."""
        if type(self.mode).before_step is not TrainingMode.before_step:
            raise UserError(
                f"sparse.method: {self.cfg.sparse.method} moves its entries between whole "
                "optimizer steps; drive it with engine.train_batch() or jax-sft train"
            )
        value, grads = self._fns["grad"](self.state, place_batch(batch, self.placement.rows))
        return MicroBatchLoss(self, value, grads)

    def backward(self, loss: MicroBatchLoss) -> None:
        """Accumulate the loss's gradients (each loss once)."""
        if not isinstance(loss, MicroBatchLoss) or loss.grads is None:
            raise UserError("backward: give the loss engine(batch) returned, once")
        grads, loss.grads = loss.grads, None
        acc = self._accumulated
        self._accumulated = grads if acc is None else self._fns["add"](acc, grads)

    def step(self) -> None:
        """At an accumulation boundary, one optimizer update; always one micro-step more."""
        if self.is_gradient_accumulation_boundary():
            if self._accumulated is None:
                raise UserError("step: no gradients to apply; call engine.backward(loss) first")
            lr = np.float32(self.lr(self.global_steps))
            self.state = self._fns["apply"](self.state, self._accumulated, lr)
            self._accumulated = None
            self.global_steps += 1
        self.micro_steps += 1

    def load_checkpoint(self, load_dir=None, tag=None) -> tuple[Path | None, dict]:
        """As `Engine.load_checkpoint`; the micro-step count restarts at the boundary."""
        found = super().load_checkpoint(load_dir, tag)
        self.micro_steps = self.global_steps * self.gradient_accumulation_steps()
        self._accumulated = None
        return found

    def zero_grad(self) -> None:
        """Drop the gradients accumulated since the last optimizer update."""
        self._accumulated = None

    def get_lr(self) -> list[float]:
        """The learning rate of each parameter group at the current step."""
        lr = self.lr(self.global_steps)
        scales = self.mode.lr_scales(self.mode.trained(self.state))
        return [lr * s for s in sorted({1.0, *jax.tree.leaves(scales)})]

    def eval_batch(self, batch: dict) -> float:
        """The micro-batch's loss, without gradients."""
        return float(self._fns["loss"](self.state, place_batch(batch, self.placement.rows)))

    def train_batch(self, data_iter: Iterator[dict] | None = None) -> float:
        """One optimizer step: over the next accumulation's micro-batches from `data_iter`
        (their mean loss), or over the run's own next global batch (its loss)."""
        if data_iter is None:
            return float(self.train_step()["loss"])
        losses = []
        for _ in range(self.gradient_accumulation_steps()):
            loss = self(next(data_iter))
            self.backward(loss)
            self.step()
            losses.append(loss.item())
        return float(np.mean(losses))
