"""DeepSpeed's engine API on both backends: `initialize` returns (engine, optimizer,
dataloader, lr_scheduler), and the loop `loss = engine(batch); engine.backward(loss);
engine.step()` trains alike on `jax_sft.initialize` and `torch_ref.initialize`."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from unittest.mock import patch

import jax
import numpy as np
import pytest
from train_fixtures import DEMO_DATA, run_config

import jax_sft
from interop.adapter_config import DEFAULT_SPARSE_METHOD
from interop.errors import UserError
from interop.processes import with_cpu_devices

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
    },
    "scheduler": {
        "type": "WarmupLR",
        "params": {"warmup_min_lr": 0, "warmup_max_lr": 1e-3, "warmup_num_steps": 2},
    },
    "gradient_clipping": 1.0,
}

# The snippet of the founding document and docs/api.md, verbatim but for the import.
LOOP = """
import json, sys
from {backend} import initialize
engine, optimizer, dataloader, lr_scheduler = initialize(
    model=sys.argv[1], config=json.loads(sys.argv[2]), training_data=sys.argv[3])
losses, lrs = [], []
for batch in dataloader:
    loss = engine(batch)
    engine.backward(loss)
    engine.step()
    losses.append(float(loss))
    lrs.append(lr_scheduler.get_last_lr()[0])
    if engine.global_steps == 4:
        break
print(json.dumps({{"losses": losses, "lrs": lrs, "micro_steps": len(losses)}}))
"""


def run_loop(backend: str, base, tmp_path) -> dict:
    """The loop as a script on one device: JAX in a process of its own (this one holds
    eight), the reference in this process (as tests/test_torch_ref_train.py runs it)."""
    argv = [str(base), json.dumps(DS_CONFIG), str(DEMO_DATA / "train.jsonl")]
    if backend == "torch_ref":
        with redirect_stdout(io.StringIO()) as out, patch.object(sys, "argv", ["-c", *argv]):
            exec(LOOP.format(backend=backend), {})
        return json.loads(out.getvalue().strip().splitlines()[-1])
    env = {**os.environ, "XLA_FLAGS": with_cpu_devices(os.environ["XLA_FLAGS"], 1)}
    argv = [sys.executable, "-c", LOOP.format(backend=backend), *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_one_deepspeed_loop_trains_alike_on_both_backends(tiny_base, tmp_path, monkeypatch):
    ours = run_loop("jax_sft", tiny_base, tmp_path)
    monkeypatch.chdir(tmp_path)
    theirs = run_loop("torch_ref", tiny_base, tmp_path)
    assert ours["micro_steps"] == theirs["micro_steps"] == 8  # accumulation 2, 4 steps
    assert ours["lrs"] == pytest.approx(theirs["lrs"], rel=1e-12)
    got, want = np.array(ours["losses"]), np.array(theirs["losses"])
    assert np.max(np.abs(got - want) / want) <= 1e-5, (got, want)
    assert got[-1] < got[0]  # it trained


@pytest.fixture
def engine_for(tiny_base, tmp_path):
    """`jax_sft.initialize` on a small fp32 run of the tiny base (1 device)."""

    def make(name: str = "run", **keywords):
        cfg = run_config(tiny_base, tmp_path / name, train={"micro_batch_size": 2})
        return jax_sft.initialize(**{"config": cfg, **keywords})

    return make


def micro_losses(engine, loader, steps: int) -> list[float]:
    losses = []
    for batch in loader:
        loss = engine(batch)
        loss.backward()  # the same as engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if engine.global_steps == steps:
            return losses
    raise AssertionError("the data ran out")


def test_founding_keywords_give_the_deepspeed_run(tiny_base):
    data = str(DEMO_DATA / "train.jsonl")
    deepspeed_spelling = dict(
        config={
            "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 2,
            "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "betas": [0.9, 0.95]}},
        },
        training_data=data,
    )
    founding_spelling = dict(
        config={"train_micro_batch_size_per_gpu": 2},
        data_loader=data,
        optimizer={"learning_rate": 2e-3},
        loss_fn="cross_entropy",
        num_microbatches=2,
    )
    runs = []
    for keywords in (deepspeed_spelling, founding_spelling):
        engine, _, loader, _ = jax_sft.initialize(model=tiny_base, **keywords)
        assert len(engine.mesh.devices.flat) == 8 and len(loader) > 6
        runs.append((engine.cfg, micro_losses(engine, loader, 3)))
    assert runs[0][0] == runs[1][0]  # the same RunConfig
    assert runs[0][1] == runs[1][1]  # and the same losses, bit for bit


def test_sparse_keyword_is_the_sparse_section(engine_for):
    engine, *_ = engine_for("default", sparse=True)
    assert engine.cfg.sparse.method == DEFAULT_SPARSE_METHOD and "indices" in engine.state
    given = {"method": "random", "density": 0.05}
    by_keyword, *_ = engine_for("kw", sparse=given)
    by_config, *_ = engine_for("cfg", config=by_keyword.cfg)
    for a, b in zip(
        jax.tree.leaves(by_keyword.state["indices"]),
        jax.tree.leaves(by_config.state["indices"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_engine_counts_steps_and_lrs_as_deepspeed(engine_for):
    engine, optimizer, loader, scheduler = engine_for(num_microbatches=3)
    batches = iter(loader)
    boundaries = []
    for _ in range(6):
        boundaries.append(engine.is_gradient_accumulation_boundary())
        engine.backward(engine(next(batches)))
        engine.step()
    assert boundaries == [False, False, True] * 2
    assert engine.global_steps == 2 and engine.micro_steps == 6
    assert engine.get_lr() == [engine.lr(2)] == scheduler.get_lr()
    assert optimizer.param_groups[0]["lr"] == engine.lr(2)
    with pytest.raises(UserError, match="steps the schedule"):
        scheduler.step()
    loss = engine.train_batch(batches)  # one optimizer step over three micro-batches
    assert engine.global_steps == 3 and np.isfinite(loss)
    assert engine.eval_batch(next(batches)) > 0
    loss = engine(next(batches))
    engine.backward(loss)
    with pytest.raises(UserError, match="once"):
        engine.backward(loss)


def test_tagged_checkpoints_round_trip_with_client_state(engine_for, tmp_path):
    engine, _, loader, _ = engine_for()
    micro_losses(engine, loader, 2)
    path = engine.save_checkpoint(tmp_path / "ckpt", tag="best", client_state={"epoch": 7})
    assert (tmp_path / "ckpt" / "latest").read_text() == "best"
    expected = micro_losses(engine, loader, 3)

    other, _, other_loader, _ = engine_for("other")
    assert other.load_checkpoint(tmp_path / "ckpt") == (path, {"epoch": 7})
    assert other.global_steps == 2
    other_loader.epoch = loader.epoch - 1  # the same micro-batches as the first engine's
    assert micro_losses(other, other_loader, 3) == expected
    with pytest.raises(UserError, match="no checkpoint 'worst'"):
        other.load_checkpoint(tmp_path / "ckpt", tag="worst")


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"loss_fn": "mse"}, "loss_fn: 'mse' is not supported"),
        ({"optimizer": object()}, "optimizer: a object cannot be used"),
        ({"model_parameters": [1]}, "model_parameters is not supported"),
        ({"collate_fn": print}, "collate_fn is not supported"),
        ({"distributed_port": 29501}, "distributed_port is not supported"),
        ({"micro_batches": 2}, "initialize: unknown argument micro_batches"),
        ({"sparse": "yes"}, "sparse: expected True or a dict"),
        ({"optimizer": {"learnin_rate": 1}}, r"\(...\): unknown key 'optim.learnin_rate'"),
        ({"training_data": 3}, "training_data: a int"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(engine_for, keywords, message):
    with pytest.raises(UserError, match=message):
        engine_for(**keywords)


def test_example_dicts_train_like_their_file(engine_for):
    rows = [json.loads(line) for line in (DEMO_DATA / "train.jsonl").read_text().splitlines()]
    from_file, _, file_loader, _ = engine_for("file", training_data=DEMO_DATA / "train.jsonl")
    from_rows, _, rows_loader, _ = engine_for("rows", training_data=rows)
    assert micro_losses(from_rows, rows_loader, 2) == micro_losses(from_file, file_loader, 2)
    with pytest.raises(UserError, match=r"training_data\[1\]: no 'chosen'"):
        engine_for("bad", training_data=[rows[0], {"prompt": "x"}])


def test_positional_arguments_follow_deepspeeds_order(tiny_base, tmp_path):
    cfg = run_config(tiny_base, tmp_path / "run", train={"micro_batch_size": 2})
    data = str(DEMO_DATA / "eval.jsonl")
    optimizer = {"learning_rate": 5e-4}
    engine, *_ = jax_sft.initialize(None, tiny_base, optimizer, None, data, config=cfg)
    assert engine.cfg.optim.learning_rate == 5e-4
    assert [s.path for s in engine.cfg.data.sources] == [data] and len(engine.data.train) == 24
    with pytest.raises(UserError, match="initialize: model given twice"):
        jax_sft.initialize(None, tiny_base, model=tiny_base)
