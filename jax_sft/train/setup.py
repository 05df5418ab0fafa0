"""Everything a JAX run holds before its first step, built in one order.

The JAX counterpart of `torch_ref/train/build.py`:
1. the source: `model.path` is an HF or Orbax directory, or an adapter on its base;
   a run of the adapter's own kind continues it, any other trains the base with the
   adapter merged in;
2. the tokenizer, and the vocabulary grown by the shared rule when it needs more rows;
3. the run's checks (dropout, sequence length, heads against the tensor axis);
4. the mesh, then the data and its batches;
5. the model in the abstract (graphdef, shapes, logical axes: nothing allocated), and
   the base loaded straight into its ZeRO placement (merges and growth on the way);
6. the training mode starts (selection of entries, an adapter continued);
7. the optimizer, the placement of the whole state, and the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from interop.checkpoints.formats import adapter_base, detect_format
from interop.config import RunConfig
from interop.data.batches import Batches
from interop.data.run_data import RunData, run_data
from interop.data.tokenizer import load_tokenizer, prepare_tokenizer
from interop.errors import UserError
from interop.preflight import check_run
from jax_sft.checkpoints.loading import adapter_patches
from jax_sft.checkpoints.placed import TensorSource, load_placed
from jax_sft.core.mode import ModeStart, TrainingMode
from jax_sft.core.optimizer import make_optimizer
from jax_sft.core.step import TrainState, init_state
from jax_sft.models import registry
from jax_sft.models.hf_names import NameTable
from jax_sft.models.vocab import vocab_growth
from jax_sft.sharding.mesh import check_heads, data_parallel_size, make_mesh
from jax_sft.sharding.placement import (
    Placement,
    batch_sharding,
    build_placement,
    local_batch_rows,
    param_shardings,
    place_batch,
)
from jax_sft.train.modes import ADAPTER_KINDS, mode_class

DROPOUT_KEYS = ("dropout", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


@dataclass
class Setup:
    """A run's parts; `state` is the only one that changes while it trains."""

    cfg: RunConfig
    out: Path
    model_dir: Path  # the base model
    adapter: Path | None  # `model.path` when it is an adapter
    hf_config: dict  # the base's config, with the vocabulary the run uses
    tokenizer: object
    mesh: Mesh
    data: RunData
    batches: Batches  # the optimizer steps' global batches
    eval_batches: Batches | None
    total_steps: int
    graphdef: nnx.GraphDef
    table: NameTable
    mode: TrainingMode
    optimizer: object
    placement: Placement
    state: TrainState
    notes: list[str]

    def global_batch(self, step: int) -> dict[str, jax.Array]:
        """The batch of optimizer step `step`, [accumulation, micro, seq], placed: each
        process reads and builds only the rows its own devices hold."""
        return global_batch(self.batches, step, self.cfg, self.mesh)


def global_batch(batches: Batches, step: int, cfg: RunConfig, mesh: Mesh) -> dict[str, jax.Array]:
    """Optimizer step `step`'s batch from `batches`, [accumulation, micro, seq], placed;
    this process fills only its own rows of it."""
    accum = cfg.train.gradient_accumulation_steps
    rows = local_batch_rows(mesh, accum, batches.batch_size // accum)
    return step_batch(batches.batch(step, rows), cfg, mesh)


def step_batch(host: dict[str, np.ndarray], cfg: RunConfig, mesh: Mesh) -> dict[str, jax.Array]:
    """A host global batch as one optimizer step takes it: [accumulation, micro, seq]."""
    accum = cfg.train.gradient_accumulation_steps
    shaped = {k: v.reshape(accum, -1, v.shape[-1]) for k, v in host.items()}
    return place_batch(shaped, batch_sharding(mesh))


def setup(
    cfg: RunConfig, model_path: Path, *, base_dir: Path = Path("."), records: list | None = None
) -> Setup:
    """Build every part of a run from its config and model (see the module docstring);
    `records` are training examples given in memory, beside the config's sources."""
    notes: list[str] = []
    kind = detect_format(model_path)
    adapter, model_dir = None, Path(model_path)
    if kind in ADAPTER_KINDS:
        adapter, model_dir = model_dir, adapter_base(model_dir, cfg.model.base)
    source = TensorSource(model_dir)
    mode_cls = mode_class(cfg)
    if cfg.model.scan_layers and not mode_cls.stacked_layers:
        raise UserError(
            f"model.scan_layers: only full fine-tuning (dense) trains stacked layers; "
            f"this run is {cfg.training_mode}"
        )
    continued = adapter if kind == mode_cls.adapter_kind else None
    patches: dict[str, list] = {}
    if adapter is not None and continued is None:
        patches = {p: [f] for p, f in adapter_patches(adapter, source).items()}
        notes.append(f"training the base {model_dir} with {adapter} merged in")

    tok_dir = Path(cfg.data.tokenizer) if cfg.data.tokenizer else model_dir
    tokenizer, eot = prepare_tokenizer(
        load_tokenizer(tok_dir),
        source.config["model_type"],
        eot_token=cfg.data.eot_token,
        add_eot_token=cfg.data.add_eot_token,
    )
    hf_config, growth = vocab_growth(source.config, len(tokenizer))
    for path, grow in growth.items():
        patches.setdefault(path, []).append(grow)
    check_run(cfg, hf_config)
    notes += [
        f"the model config sets {key} {hf_config[key]}; the JAX backend trains without dropout"
        for key in DROPOUT_KEYS
        if hf_config.get(key)
    ]
    mesh = make_mesh(cfg.parallel)
    check_heads(hf_config, mesh)
    dp = data_parallel_size(mesh)
    data = run_data(cfg, tokenizer, eot, dp, base_dir=base_dir, records=records)
    batches, total_steps = data.global_batches(), data.total_steps()

    m = cfg.model
    abstract = nnx.eval_shape(
        lambda: registry.build_model(
            hf_config,
            dtype=m.dtype,
            param_dtype=m.param_dtype,
            remat=m.remat,
            scan_layers=m.scan_layers,
        )
    )
    axes = registry.param_axes(abstract)
    graphdef, abstract_state = nnx.split(abstract)
    shapes = nnx.to_pure_dict(abstract_state)
    zero = cfg.parallel.zero_stage
    params = load_placed(source, shapes, param_shardings(mesh, zero, shapes, axes), patches)
    source.close()
    table = registry.name_table(hf_config)

    ctx = ModeStart(
        cfg=cfg,
        hf_config=hf_config,
        graphdef=graphdef,
        params=params,
        axes=axes,
        table=table,
        mesh=mesh,
        train=batches,
        global_batch=lambda step: global_batch(batches, step, cfg, mesh),
        total_steps=total_steps,
        model_dir=model_dir,
        adapter=continued,
        base_fingerprint=source.fingerprint,
        notes=notes,
    )
    mode, arrays = mode_cls.start(ctx)
    trained = mode.trained({"params": params, **arrays})
    optimizer = make_optimizer(cfg.optim, mode.decay_mask(trained), mode.lr_scales(trained))
    placement = build_placement(
        mesh,
        zero,
        params,
        axes,
        jax.eval_shape(optimizer.init, trained),
        trained=trained,
        replicated=() if mode.sharded_trained else (mode.key,),
        extra=arrays,
    )
    state = init_state(params, arrays, mode, optimizer, cfg.train.seed, placement)
    return Setup(
        cfg=cfg,
        out=Path(cfg.train.output_dir),
        model_dir=model_dir,
        adapter=adapter,
        hf_config=hf_config,
        tokenizer=tokenizer,
        mesh=mesh,
        data=data,
        batches=batches,
        eval_batches=data.eval_batches(),
        total_steps=total_steps,
        graphdef=graphdef,
        table=table,
        mode=mode,
        optimizer=optimizer,
        placement=placement,
        state=state,
        notes=notes,
    )
