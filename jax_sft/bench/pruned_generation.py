"""`jax-sft bench --generate --pruned`: generation speed of structurally pruned exports.

The ~30M-parameter Llama of the generation benchmark (random weights) is cut one-shot by
magnitude in the two ways that ship a physically smaller model, FFN rows at 50% and
heads at 1/2 (half the KV groups with their query heads), and shrunk with
`interop.pruning.shrink`, exactly as a pruning run exports. Our generation (prefill of
64-token prompts, then 127 greedy decode steps, `bench.generation.timed`) runs on each in
alternating rounds, the order rotating, so machine load falls on all alike; the table
gives median tokens/s and the median per-round speedup over dense. Unstructured and N:M
zeros are not here: a dense matmul does not skip them.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.checkpoints.hf import HFCheckpointReader
from interop.config_files import load_config
from interop.pruning.masks import Pruner
from interop.pruning.shrink import shrink
from jax_sft.bench.generation import CONFIG, NEW, PROMPT, timed
from jax_sft.checkpoints.loading import write_checkpoint
from jax_sft.models import registry
from jax_sft.models.hf_names import hf_to_ours

CUTS = {"rows 50%": "rows", "heads 1/2": "heads"}


def _models() -> dict[str, tuple]:
    """{name: (graphdef, params, parameter count)}: dense and each shrunk cut."""
    dense = registry.build_model(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        flat = {k: np.asarray(v) for k, v in registry.flat_state(dense).items()}
        write_checkpoint(Path(tmp), "hf", CONFIG, flat)
        with HFCheckpointReader(tmp) as reader:
            tensors = dict(reader)
    out = {"dense": (CONFIG, tensors)}
    shapes = {n: a.shape for n, a in tensors.items()}
    for name, pattern in CUTS.items():
        cfg = load_config(None, [f"prune.pattern={pattern}", "prune.sparsity=0.5"]).prune
        pruner = Pruner(cfg, CONFIG, shapes)
        masks = pruner.cut(0, tensors, pruner.initial_masks())
        config, small, notes = shrink(CONFIG, tensors, pruner, masks)
        if notes:
            raise RuntimeError(f"{pattern} did not shrink: {notes}")
        out[name] = (config, small)
    models = {}
    for name, (config, hf) in out.items():
        pairs = hf_to_ours(
            registry.name_table(config), hf.items(), registry.expected_shapes(config), name
        )
        graphdef, params = nnx.split(registry.model_from_flat(config, pairs))
        models[name] = (graphdef, params, sum(a.size for a in hf.values()))
    return models


def benchmark(rounds: int = 5, batch: int = 8) -> list[dict]:
    """One row per model: parameters, median prefill and decode tokens/s, speedups."""
    models = _models()
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, CONFIG["vocab_size"], (batch, PROMPT)), jnp.int32)
    mask = jnp.ones_like(ids)
    for graphdef, params, _ in models.values():
        timed(graphdef, params, ids, mask)  # compile
    names = list(models)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            graphdef, params, _ = models[name]
            times[name].append(timed(graphdef, params, ids, mask))
    rows = []
    for name in names:
        row = {"model": name, "parameters": models[name][2], "batch": batch}
        for i, part, tokens in ((0, "prefill", batch * PROMPT), (1, "decode", batch * (NEW - 1))):
            row[f"{part}_tok_s"] = tokens / statistics.median(t[i] for t in times[name])
            row[f"{part}_speedup"] = statistics.median(
                d[i] / t[i] for d, t in zip(times["dense"], times[name], strict=True)
            )
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | parameters | prefill tok/s | speedup | decode tok/s | speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['prefill_tok_s']:,.0f} | "
            f"{r['prefill_speedup']:.2f}x | {r['decode_tok_s']:,.0f} | {r['decode_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"
