"""Where a JAX training step's time goes, by kind of XLA operation (docs/benchmarks.md).

Profiles one forward and backward pass of the benchmark's Llama (`llama-50m`, batch 8 x
512, fp32; the train step without the optimizer update, which is a few percent) with
`jax.profiler`, then sums the duration of every XLA operation the CPU runtime executed,
over both worker threads, into four kinds: matmuls (the matmul library's fused kernels
and plain dots), copies and transposes, other fusions (elementwise work and reductions:
norms, softmax, rotary, the loss), and the rest. The plain dots (the weight gradients,
x^T dy, which the CPU runtime hands to Eigen) are recorded at launch only, a fraction of
a millisecond each, so their work is missing from the matmul row. Usage:

    python scripts/train_step_profile.py [MODEL] [SEQ] [BATCH]
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from interop.tiny_configs import tiny_config
from jax_sft.core.forward import forward_loss
from jax_sft.core.step import compiler_options
from jax_sft.models import registry

KINDS = (
    ("matmul", re.compile(r"^(ynn_fusion|xnn_fusion|dot|dot_general|custom-call)")),
    ("copy / transpose", re.compile(r"(copy|transpose)")),
    ("other fusions (elementwise, reductions)", re.compile(r"fusion")),
)


def kind(name: str) -> str:
    return next((k for k, pattern in KINDS if pattern.search(name)), "rest")


def main(model: str = "llama-50m", seq: int = 512, batch: int = 8) -> None:
    config = tiny_config(model)
    graphdef, params = nnx.split(registry.build_model(config, seed=0), nnx.Param)
    ids = jax.random.randint(jax.random.key(0), (batch, seq), 0, config["vocab_size"])
    mb = {
        "input_ids": ids,
        "attention_mask": jnp.ones_like(ids),
        "positions": None,
        "segment_ids": None,
        "labels": ids,
    }
    step = jax.jit(
        jax.grad(lambda p: forward_loss(graphdef, p, mb)[0]), compiler_options=compiler_options()
    )
    jax.block_until_ready(step(params))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            start = time.perf_counter()
            jax.block_until_ready(step(params))
            wall = time.perf_counter() - start
        trace = next(Path(tmp).rglob("perfetto_trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    seconds: dict[str, float] = collections.defaultdict(float)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith("$") or "Execute" in name or "Await" in name:
            continue
        if re.search(r"(fusion|dot|copy|transpose|custom-call|concatenate|slice)", name):
            seconds[kind(name)] += e["dur"] / 1e6
    total = sum(seconds.values())
    print(f"{model}, batch {batch} x {seq}, fp32: forward + backward {wall:.2f} s wall")
    print("| kind of operation | thread-seconds | share |")
    print("| --- | ---: | ---: |")
    for k, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {s:.2f} | {s / total:.0%} |")


if __name__ == "__main__":
    main(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))
