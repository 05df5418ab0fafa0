"""Where a decode step's time goes, for the model `jax-sft bench --generate` times.

Three measurements, batch 1 and 8, each the median of several runs:
- the decode step itself (`jax_sft.generate.decode`, 64-token prompts, 128 new tokens:
  what the benchmark times), per step;
- the weights alone: the model's own kernels (every projection and the LM head) applied
  one after another to a [batch, hidden] activation, 127 times in one loop; fp32 weights
  are read from memory once per step, so this is the floor a decode step cannot beat
  without smaller weights;
- the cost of attending one cached slot: decode steps with 16- and 256-token prompts (32
  new tokens, so the cache holds 47 and 287 slots) differ only in the slots each step
  reads; the difference per slot, times the slots an average step of the benchmark
  attends (the cache grows by `generate.SEGMENT`), is attention's share.
The rest (norms, rotary embeddings, sampling, the loop) is what remains.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interop.tiny_configs import tiny_config
from jax_sft.generate import Sampling, decode, prefill, segment_ends
from jax_sft.models import registry

CONFIG = tiny_config("llama-30m")
PROMPT, NEW, RUNS = 64, 128, 5


def _median(fn) -> float:
    fn()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_seconds(graphdef, params, batch: int, prompt: int, new: int) -> float:
    """Seconds per decode step (the first token comes from prefill, not timed)."""
    ids = jnp.asarray(np.random.default_rng(batch).integers(3, 8000, (batch, prompt)), jnp.int32)
    key, kw = jax.random.key(0), {"steps": new, "sampling": Sampling()}
    first, cache = prefill(graphdef, params, ids, jnp.ones_like(ids), key, **kw)

    def run():
        decode(graphdef, params, first, cache, key, **kw, eos=-1, pad=0).block_until_ready()

    return _median(run) / (new - 1)


def weights_seconds(kernels: list[jax.Array], batch: int) -> float:
    """Seconds per step of the kernels' matmuls alone, one after another."""

    @jax.jit
    def loop(x, kernels):
        def body(_, x):
            for kernel in kernels:
                x = jax.lax.dynamic_update_slice(x, x[:, : kernel.shape[0]] @ kernel, (0, 0))
            return x

        return jax.lax.fori_loop(0, NEW - 1, body, x)

    x = jnp.ones((batch, max(max(k.shape) for k in kernels)), jnp.float32) * 1e-3
    return _median(lambda: loop(x, kernels).block_until_ready()) / (NEW - 1)


def average_slots() -> float:
    """Cache slots an average decode step of the benchmark attends."""
    ends, start, total = segment_ends(NEW), 1, 0
    for end in ends:
        total += (end - start) * (PROMPT + end - 1)
        start = end
    return total / (NEW - 1)


def main() -> None:
    model = registry.build_model(CONFIG)
    graphdef, params = nnx.split(model)
    flat = registry.flat_state(model)
    kernels = [jnp.asarray(v) for k, v in flat.items() if k.endswith("kernel")]
    print("| batch | decode step ms | weights alone ms | attention ms | rest ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for batch in (1, 8):
        step = step_seconds(graphdef, params, batch, PROMPT, NEW)
        short = step_seconds(graphdef, params, batch, 16, 32)
        long = step_seconds(graphdef, params, batch, 256, 32)
        attention = (long - short) / (256 - 16) * average_slots()
        weights = weights_seconds(kernels, batch)
        rest = step - weights - attention

        def cell(s: float, step: float = step) -> str:
            return f"{s * 1e3:.2f} ({s / step:.0%})"

        print(
            f"| {batch} | {step * 1e3:.2f} | {cell(weights)} | {cell(attention)} | {cell(rest)} |"
        )


if __name__ == "__main__":
    main()
