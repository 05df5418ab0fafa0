"""Training throughput and MFU of an engine, timed without a host sync per step.

Throughput times `steps` train steps after one warm-up (compile) step, synchronising
only at the end; tokens/s counts scored tokens and MFU divides the achieved training
FLOPs (`jax_sft.models.flops`, the one formula) by the device's peak for the compute
dtype, where the peak is known.
"""

from __future__ import annotations

import time

import jax

from jax_sft.models.flops import train_flops_per_token
from jax_sft.train.engine import Engine

# Dense peak FLOP/s per device by (device kind prefix, dtype); MFU is reported where known.
PEAK_FLOPS = {
    ("NVIDIA H200", "bfloat16"): 989e12,
    ("NVIDIA H100", "bfloat16"): 989e12,
    ("NVIDIA A100", "bfloat16"): 312e12,
}


def peak_flops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for (k, d), v in PEAK_FLOPS.items() if kind.startswith(k) and d == dtype), None)


def throughput(engine: Engine, steps: int) -> dict:
    """Tokens/s and MFU over `steps` timed steps (one warm-up step first)."""
    jax.block_until_ready(engine.train_step())
    batches = [engine.global_batch(engine.global_steps + i) for i in range(steps)]
    started = time.perf_counter()
    metrics = [engine.train_step(b) for b in batches]
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - started
    tokens = sum(int(m["tokens"]) for m in metrics)
    positions = sum(int(b["attention_mask"].size) for b in batches)
    seq = engine.cfg.data.max_seq_len
    flops = train_flops_per_token(engine.hf_config, seq) * positions / elapsed
    peak = peak_flops(engine.cfg.model.dtype)
    n = len(engine.mesh.devices.flat)
    return {
        "steps": steps,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "model_flops_per_s": flops,
        "mfu": flops / (peak * n) if peak else None,
        "device_kind": jax.devices()[0].device_kind,
        "devices": n,
    }
