"""Wanda or SparseGPT as the cut that starts a pruning run (`prune.method`).

The run's base is pruned once, before the first step, exactly as `jax-sft prune` prunes a
model (`calibrate.prune_model`: layer after layer, each calibrated on what the already
pruned layers before it produce), on calibration sequences cut from the run's own train
examples: `prune.calibration_samples` windows of `data.max_seq_len` tokens, the
examples joined end to end (prompts included: calibration wants the activations the
model meets, not the loss's tokens), on the parameters as the run placed them, so the
per-layer passes run sharded like training. Masked fine-tuning then holds that mask.
SparseGPT also repairs the weights it keeps, so the run starts from those.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from interop.prune_config import PruneRule, n_of_m
from jax_sft.core.mode import ModeStart
from jax_sft.prune.calibrate import prune_model, windows


def calibrated_start(
    ctx: ModeStart, rule: PruneRule, targets: list[str]
) -> tuple[dict[str, np.ndarray], dict | None, dict]:
    """(masks of the kernels at `targets` by our path, [in, out], True = kept; the
    repaired starting parameters for SparseGPT, None for Wanda; the calibration, as
    pruning.json records it)."""
    prune = ctx.cfg.prune
    streams = [e.input_ids for e in ctx.train.examples]
    ids = windows(
        streams,
        ctx.train.seq_len,
        prune.calibration_samples,
        "the run's train data",
        "data.max_seq_len",
    )
    # On the parameters as the run placed them (merging copies no array and changes
    # nothing in ctx.params): each layer's passes run sharded like training.
    model = nnx.merge(ctx.graphdef, ctx.params)
    n_m = n_of_m(rule.pattern)
    masks = prune_model(
        model, ids, set(targets), rule.method, sparsity=None if n_m else rule.sparsity, n_m=n_m
    )
    ctx.notes.append(
        f"prune.method {rule.method}: calibrated on {len(ids)} sequences of "
        f"{ids.shape[1]} tokens from the train data"
    )
    repaired = nnx.to_pure_dict(nnx.state(model)) if rule.method == "sparsegpt" else None
    record = {"data": "the run's train examples", "samples": len(ids), "max_seq_len": ids.shape[1]}
    return masks, repaired, record
