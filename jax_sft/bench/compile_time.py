"""How long the train step takes to compile, layers looped against layers scanned.

The step is built exactly as a dense run builds it (`core.step.make_train_step`: the
optimizer, the placement on a one-device mesh, the donated state) but over abstract
arrays, so a deep model costs no memory: `lower` traces it to StableHLO, `compile`
runs XLA. Each depth is built with its layers as a list and stacked
(`model.scan_layers`, `models.stacked`); rounds alternate the two, and the figures are
medians. A fresh process would also pay JAX's own start-up, the same for both.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.config import OptimConfig, ParallelConfig
from interop.tiny_configs import tiny_config
from jax_sft.core.dense import DenseTraining
from jax_sft.core.optimizer import make_optimizer
from jax_sft.core.step import make_train_step
from jax_sft.models import registry
from jax_sft.sharding.mesh import make_mesh
from jax_sft.sharding.placement import build_placement

MODEL, BATCH, SEQ = "llama-50m", 8, 512
DEPTHS = (8, 32)


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def step_compile_seconds(
    hf_config: Mapping, scan_layers: bool, batch: int, seq: int, remat: bool = False
) -> dict:
    """{"lower": seconds, "compile": seconds} for the dense train step of `hf_config`."""
    mesh = make_mesh(ParallelConfig(), jax.devices()[:1])
    model = nnx.eval_shape(
        lambda: registry.build_model(hf_config, scan_layers=scan_layers, remat=remat)
    )
    axes = registry.param_axes(model)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    mode = DenseTraining(registry.name_table(hf_config))
    optimizer = make_optimizer(OptimConfig(), mode.decay_mask(params))
    opt_state = jax.eval_shape(optimizer.init, params)
    placement = build_placement(mesh, 0, params, axes, opt_state)
    scalars = jax.eval_shape(
        lambda: {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(0))}
    )
    train_state = _abstract({"params": params, "opt_state": opt_state, **scalars}, placement.state)
    tokens = jax.ShapeDtypeStruct((1, batch, seq), jnp.int32, sharding=placement.batch)
    keys = ("input_ids", "attention_mask", "labels", "positions", "segment_ids")
    step = make_train_step(graphdef, optimizer, placement, mode)
    start = time.perf_counter()
    lowered = step.lower(train_state, dict.fromkeys(keys, tokens), np.float32(0.0))
    traced = time.perf_counter()
    lowered.compile()
    return {"lower": traced - start, "compile": time.perf_counter() - traced}


def benchmark(model: str, depths: tuple[int, ...], rounds: int, batch: int, seq: int) -> dict:
    """Medians over alternating rounds, per depth and remat setting, looped and scanned."""
    cases = [(depth, remat) for depth in depths for remat in (False, True)]
    found: dict[tuple, list[dict]] = {}
    for _ in range(rounds):
        for depth, remat in cases:
            config = {**tiny_config(model), "num_hidden_layers": depth}
            for scan in (False, True):
                jax.clear_caches()  # each compile from scratch, none from the cache
                found.setdefault((depth, remat, scan), []).append(
                    step_compile_seconds(config, scan, batch, seq, remat)
                )
    rows = []
    for depth, remat in cases:
        row: dict[str, object] = {"layers": depth, "remat": remat}
        for scan, name in ((False, "loop"), (True, "scan")):
            runs = found[depth, remat, scan]
            for part in ("lower", "compile"):
                row[f"{name}_{part}_s"] = statistics.median(r[part] for r in runs)
            row[f"{name}_total_s"] = statistics.median(r["lower"] + r["compile"] for r in runs)
        row["scan_over_loop_compile"] = row["scan_compile_s"] / row["loop_compile_s"]
        row["scan_over_loop_total"] = row["scan_total_s"] / row["loop_total_s"]
        rows.append(row)
    return {"model": model, "batch": batch, "seq": seq, "rounds": rounds, "rows": rows}


def table(summary: dict) -> str:
    """The benchmark as a Markdown table."""
    lines = [
        "| layers | remat | loop: trace + compile s | scan: trace + compile s "
        "| scan / loop, compile | scan / loop, both |",
        "| ---: | :---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['layers']} | {'yes' if r['remat'] else 'no'} "
            f"| {r['loop_lower_s']:.2f} + {r['loop_compile_s']:.2f} "
            f"| {r['scan_lower_s']:.2f} + {r['scan_compile_s']:.2f} "
            f"| {r['scan_over_loop_compile']:.2f} | {r['scan_over_loop_total']:.2f} |"
        )
    return "\n".join(lines) + "\n"
