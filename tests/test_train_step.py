"""The train step's arithmetic: accumulation over the global batch, and packing."""

import jax
import jax.numpy as jnp
import numpy as np
from train_fixtures import run_config

from interop.data.batches import Batches
from jax_sft.core.step import compiler_options
from jax_sft.train.run import make_engine

CONSTANT = {"type": "constant"}


def params_of(engine):
    return jax.tree.leaves(jax.device_get(engine.state["params"]))


def max_param_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_four_micro_batches_of_two_equal_one_batch_of_eight(tiny_base, tmp_path):
    # Adam's first step is lr * g / (|g| + eps): with the default eps 1e-8 a weight whose
    # gradient is ~1e-8 turns float rounding in g into ~1e-6 of update, whatever the
    # batching. eps 1e-4 keeps that amplification at 10 and the update at about lr.
    adam = {"eps": 1e-4}
    accum = make_engine(
        run_config(
            tiny_base,
            tmp_path / "a",
            schedule=CONSTANT,
            optim=adam,
            train={"micro_batch_size": 2, "gradient_accumulation_steps": 4},
        )
    )
    whole = make_engine(
        run_config(
            tiny_base,
            tmp_path / "b",
            schedule=CONSTANT,
            optim=adam,
            train={"micro_batch_size": 8},
        )
    )
    before = params_of(whole)
    batch = accum.global_batch(0)
    assert batch["input_ids"].shape[:2] == (4, 2)
    m_accum = accum.train_step(batch)
    m_whole = whole.train_step({k: v.reshape(1, 8, -1) for k, v in batch.items()})
    assert abs(float(m_accum["loss"]) - float(m_whole["loss"])) <= 1e-6
    assert int(m_accum["tokens"]) == int(m_whole["tokens"]) > 0
    assert max_param_diff(params_of(accum), params_of(whole)) <= 1e-6
    assert max_param_diff(params_of(whole), before) > 1e-4  # the update did something


def test_packed_loss_equals_unpacked_loss(tiny_base, tmp_path):
    engine = make_engine(run_config(tiny_base, tmp_path / "p", data={"max_seq_len": 128}))
    examples = engine.batches.examples[:12]
    pad = engine.tokenizer.pad_token_id
    totals = []
    for packing, seq_len in ((False, 128), (True, 512)):
        batches = Batches(
            examples,
            batch_size=12,
            seq_len=seq_len,
            pad_id=pad,
            packing=packing,
            seed=0,
            shuffle=False,
        )
        s_total, n_total = 0.0, 0
        for i in range(batches.steps_per_epoch):
            batch = batches.batch(i)
            if packing:
                assert batch["segment_ids"].max() > 1  # rows really hold several examples
            s, n = engine._eval_step(engine.state, {k: jnp.asarray(v) for k, v in batch.items()})
            s_total, n_total = s_total + float(s), n_total + int(n)
        totals.append((s_total, n_total))
    (s_u, n_u), (s_p, n_p) = totals
    assert n_u == n_p > 0
    assert abs(s_u / n_u - s_p / n_p) <= 1e-5


def test_remat_recomputes_without_changing_results(tiny_base, tmp_path):
    plain = make_engine(run_config(tiny_base, tmp_path / "a", schedule=CONSTANT))
    remat = make_engine(
        run_config(
            tiny_base,
            tmp_path / "b",
            schedule=CONSTANT,
            model={"path": str(tiny_base), "remat": True},
        )
    )
    batch = plain.global_batch(0)
    lr = jnp.float32(1e-3)
    jaxprs = [str(e._step_fn.trace(e.state, batch, lr).jaxpr) for e in (plain, remat)]
    assert "remat2[" not in jaxprs[0] and "remat2[" in jaxprs[1]
    plain.train_step(batch)
    remat.train_step(batch)
    assert max_param_diff(params_of(plain), params_of(remat)) <= 1e-6


def test_compiler_options_leave_what_xla_flags_set_to_the_user(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert compiler_options() == {
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
        "xla_backend_optimization_level": 2,
    }
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert compiler_options() == {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
