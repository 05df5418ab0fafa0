"""The train step's arithmetic: accumulation, packing, and what one update does."""

import jax
import jax.numpy as jnp
import numpy as np
from train_fixtures import run_config

from jax_sft.train.run import initialize


def params_of(engine):
    return jax.tree.leaves(jax.device_get(engine.state["params"]))


def test_four_micro_batches_of_two_equal_one_batch_of_eight(tiny_base, tmp_path):
    accum = initialize(run_config(tiny_base, tmp_path / "a",
                                  train={"micro_batch_size": 2, "gradient_accumulation_steps": 4}))
    whole = initialize(run_config(tiny_base, tmp_path / "b", train={"micro_batch_size": 8}))
    batch = accum.global_batch(0)
    assert batch["input_ids"].shape[:2] == (4, 2)
    flat = {k: v.reshape(1, 8, -1) for k, v in batch.items()}
    m_accum, m_whole = accum.train_batch(batch), whole.train_batch(flat)
    assert float(m_accum["loss"]) == np.float32(m_whole["loss"]) or abs(
        float(m_accum["loss"]) - float(m_whole["loss"])) < 1e-6
    diffs = [np.abs(a - b).max() for a, b in zip(params_of(accum), params_of(whole), strict=True)]
    assert max(diffs) <= 1e-6
    assert max(np.abs(a - b).max() for a, b in zip(
        params_of(accum), jax.tree.leaves(jax.device_get(
            initialize(run_config(tiny_base, tmp_path / "c")).state["params"])), strict=True)) > 1e-5


def test_packed_loss_equals_unpacked_loss(tiny_base, tmp_path):
    from interop.data.batches import Batches

    engine = initialize(run_config(tiny_base, tmp_path / "p", data={"max_seq_len": 128}))
    examples = engine.batches.examples[:12] if hasattr(engine.batches, "examples") else None
    assert examples is not None
    pad = engine.tokenizer.pad_token_id
    unpacked = Batches(examples, batch_size=12, seq_len=128, pad_id=pad, packing=False, seed=0,
                       shuffle=False)
    packed = Batches(examples, batch_size=12, seq_len=128, pad_id=pad, packing=True, seed=0,
                     shuffle=False)
    totals = []
    for batches in (unpacked, packed):
        s_total, n_total = 0.0, 0
        for i in range(batches.steps_per_epoch):
            b = {k: jnp.asarray(v) for k, v in batches.batch(i).items()}
            s, n = engine._eval_step(engine.state["params"], b)
            s_total, n_total = s_total + float(s), n_total + int(n)
        totals.append((s_total, n_total))
    (s_u, n_u), (s_p, n_p) = totals
    assert n_u == n_p > 0
    assert packed.steps_per_epoch == 1 and (packed.batch(0)["segment_ids"].max() > 1)
    assert abs(s_u / n_u - s_p / n_p) <= 1e-5
