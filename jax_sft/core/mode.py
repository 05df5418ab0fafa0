"""A way of training, from start to export: the protocol every training mode implements.

A run's state is one dict: "params" (the model's parameters: trained by the dense mode,
the frozen base for every other), the mode's own trees ("trained", "indices", ...),
"opt_state" (for the trained tree only), "step" and "rng". The engine and the jitted
step know a mode only through this protocol:

- `start(ctx)` (a classmethod): what trains and how it is chosen (scores, selection, an
  adapter continued); returns the mode and its initial trees, on the host ("params"
  among them replaces the starting weights: SparseGPT repairs what it keeps).
- `key`: the state key of the trained tree, the only tree the optimizer ever sees;
  frozen leaves are simply not in it, so they carry no optimizer state. A mode that
  trains more than one state tree (pruning with learned scores) overrides `trained` /
  `with_trained`; `sharded_trained` says whether the trained tree is placed like the
  parameters (dense, pruning) or replicated (small trees: sparse values, LoRA);
  `stacked_layers` whether it trains layers stored stacked (`model.scan_layers`, whose
  parameter trees have no per-layer leaves: only the dense mode).
- `params(state, trained)`: the model's parameters, computed inside the jit.
- `micro_loss(graphdef, state, trained, mb)`: the summed objective of one micro-batch
  and the summed metrics it reports ("loss" is the token cross entropy); a mode that
  adds a data-dependent term (distillation) overrides it.
- `penalty(trained)`: an optional loss term; `decay_mask(trained)`: which trained
  entries take weight decay; `lr_scales(trained)`: per-leaf learning-rate multipliers.
- `before_step(step, state, batch)` / `after_step(done, state)`: hooks around each
  optimizer step, on the host (SpIEL moves its index sets there, pruning cuts there).
- `after_update(old, state, grads, lr)`: inside the jitted step, after the optimizer
  update (pruning re-applies its masks and takes its proximal steps there).
- `adapter_tree(state)` / `write_adapter(dst, tree)`: what the run exports beside the
  merged model (nothing for dense); `export_tree(state)` / `shipped(...)`: how the
  merged model itself is shipped (pruning cuts structures out and reports sparsity).

A new way of training is a new module with one subclass and one line in
`jax_sft.train.modes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from interop.config import RunConfig
from interop.data.batches import Batches
from jax_sft.core.forward import forward_loss
from jax_sft.models.hf_names import NameTable


@dataclass
class ModeStart:
    """What a mode may use to choose and start its trained tree."""

    cfg: RunConfig
    hf_config: dict  # the base's config, with the vocabulary the run uses
    graphdef: nnx.GraphDef
    params: dict  # the base parameters, already placed on the mesh
    axes: dict  # their logical axis names, nested alike
    table: NameTable
    mesh: Mesh
    train: Batches  # the run's global train batches
    global_batch: Callable[[int], dict]  # the placed [accumulation, micro, seq] batch of a step
    total_steps: int
    model_dir: Path  # the base model
    adapter: Path | None  # an adapter of this mode's own kind, to continue
    base_fingerprint: Callable[[], str]  # of the base model; computed once, on first call
    notes: list[str] = field(default_factory=list)


class TrainingMode:
    """The protocol, with the defaults most modes keep (see the module docstring)."""

    key: ClassVar[str] = "trained"
    sharded_trained: ClassVar[bool] = False
    adapter_kind: ClassVar[str | None] = None  # the adapter format a run of this mode continues
    stacked_layers: ClassVar[bool] = False  # whether it trains layers stored stacked

    @classmethod
    def start(cls, ctx: ModeStart) -> tuple[TrainingMode, dict]:
        raise NotImplementedError

    def trained(self, state: Mapping) -> Mapping:
        """The tree the optimizer updates."""
        return state[self.key]

    def with_trained(self, state: Mapping, trained: Mapping) -> dict:
        """`state` with the trained tree replaced."""
        return {**state, self.key: trained}

    def params(self, state: Mapping, trained: Mapping | None = None) -> Mapping:
        raise NotImplementedError

    def micro_loss(
        self, graphdef: nnx.GraphDef, state: Mapping, trained: Mapping, mb: dict
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Traced: (the summed objective of micro-batch `mb` under the trained tree
        `trained`, {metric name: its sum over the micro-batch's scored tokens}). Sums, not
        means, so accumulation divides once by the global batch's scored tokens."""
        total, _ = forward_loss(graphdef, self.params(state, trained), mb)
        return total, {"loss": total}

    def penalty(self, trained: Mapping) -> jax.Array | None:
        return None

    def decay_mask(self, trained: Mapping) -> Mapping:
        raise NotImplementedError

    def lr_scales(self, trained: Mapping) -> Mapping | None:
        return None

    def before_step(self, step: int, state: dict, batch: dict) -> None:
        """Called with the state and batch of 0-based step `step`, before it runs."""

    def after_step(self, done: int, state: dict) -> dict:
        """Called after `done` steps; returns the state the next step starts from."""
        return state

    def after_update(self, old: Mapping, state: dict, grads: Mapping, lr: jax.Array) -> dict:
        """Traced inside the step: `state` just updated from the trained tree `old` with
        `grads` at learning rate `lr`; returns the state the step ends with."""
        return state

    def adapter_tree(self, state: Mapping) -> Mapping | None:
        """The state's arrays an adapter export holds (None: the mode has no adapter)."""
        return None

    def write_adapter(self, dst: Path, tree: Mapping) -> None:
        """Write the adapter (`tree` gathered to the host) into the directory `dst`."""
        raise NotImplementedError

    def export_tree(self, state: Mapping) -> Mapping | None:
        """The state's arrays `shipped` needs (gathered to the host by the engine); None:
        the merged model ships as it is, streamed tensor by tensor."""
        return None

    def shipped(
        self, hf_config: dict, tensors: dict[str, np.ndarray], tree: Mapping
    ) -> tuple[dict, dict[str, np.ndarray], dict[str, dict]]:
        """The exported model (HF config and tensors by HF name) as the mode ships it,
        and JSON reports {file name: content} written beside it."""
        raise NotImplementedError
