"""`jax-sft bench CONFIG.yaml --memory`: XLA's exact per-device memory for a run's train step.

The train step is compiled for the config's mesh and ZeRO stage (nothing is executed),
and `compiled.memory_analysis()` gives per-device bytes for arguments (parameters,
optimizer state, batch), outputs, temporaries and generated code. On the CPU these
figures are exact and independent of machine load, so placements compare exactly.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from interop.config import load_config
from interop.errors import UserError
from interop.report import emit
from jax_sft.train.run import initialize

FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="per-device memory of the compiled train step")
    p.add_argument("config", nargs="?", help="YAML run config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE")
    p.add_argument("--memory", action="store_true", help="report XLA's memory_analysis()")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(run=run)


def train_step_memory(engine) -> dict[str, int]:
    """Per-device bytes of the engine's compiled train step."""
    batch = jax.eval_shape(lambda: engine.global_batch(0))
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=engine.placement.batch)
        for k, v in batch.items()
    }
    compiled = engine._train_step.lower(engine.state, batch, jnp.float32(0.0)).compile()
    analysis = compiled.memory_analysis()
    return {field: int(getattr(analysis, field)) for field in FIELDS}


def run(args: argparse.Namespace) -> int:
    if not args.memory:
        raise UserError("bench: only --memory is implemented so far")
    cfg = load_config(args.config, args.overrides)
    engine = initialize(cfg)
    memory = train_step_memory(engine)
    mesh = dict(engine.mesh.shape)
    summary = {"mesh": mesh, "zero_stage": cfg.parallel.zero_stage, **memory}
    lines = [f"mesh {mesh}, ZeRO-{cfg.parallel.zero_stage}; per device:"]
    lines += [f"  {k}: {v:,}" for k, v in memory.items()]
    emit(lines, summary, args.json)
    return 0
